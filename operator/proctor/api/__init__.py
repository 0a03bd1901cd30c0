"""The Proctor API: versioned pydantic models, the single source of the CRD schemas."""

GROUP = "proctor.dev"

"""The Proctor API: versioned pydantic models, the single source of the CRD schemas.

Its names (group, version, label and annotation keys) are in :mod:`proctor.api.names`.
"""

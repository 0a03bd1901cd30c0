"""The Kubernetes API edge: the HTTP client, reads and writes, and lost pods."""

"""The worker process that leases cases, runs them in isolation and records results."""

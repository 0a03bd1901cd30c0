"""Statistics: pass rates and decisions, and benchmark timing."""

"""Optional integrations with other tools."""

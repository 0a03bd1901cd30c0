"""Pure planning: how many workers, where they go, and when to scale."""

"""Pure planning: how many workers a run gets, where they may go, and when to scale."""

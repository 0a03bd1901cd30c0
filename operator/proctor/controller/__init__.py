"""Kopf wiring: the handlers, the pass loop and its timing, peering and the operator's metrics."""

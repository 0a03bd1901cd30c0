"""Running an EvalRun on this machine, without a cluster."""

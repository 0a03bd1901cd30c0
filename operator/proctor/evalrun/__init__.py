"""An EvalRun's reconcile pass and its status."""

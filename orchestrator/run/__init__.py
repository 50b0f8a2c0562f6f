"""One run: the experiment loop, its directory (storage) and its MLflow run (tracking)."""

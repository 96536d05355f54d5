"""Prefect flows: the pipeline flow (one task per dvc.yaml stage) and the drift flow."""

"""The MLflow model registry: client, the generation gate, model cards, decision reports."""

"""Developer infrastructure: the loopback PostgreSQL/S3/MLflow/Prefect stack (`genops stack`)."""

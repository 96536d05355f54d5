"""The flows' and deployments' names, queues and schedules: defined once, without Prefect.

The flows, the `genops flow` / `genops drift` commands and the loopback stack all read these,
so `genops --help` and `genops stack` never import Prefect, and the drift flow names the retrain
deployment without importing the training flow.
"""

from __future__ import annotations

PIPELINE_FLOW = "genops-pipeline"
DEPLOYMENT = "nightly"  # the pipeline's scheduled deployment, also what a drift alarm runs
NIGHTLY_CRON = "0 2 * * *"
ON_DATA_DEPLOYMENT = "on-data-change"
ON_DATA_INTERVAL_S = 900
FAMILY_FLOW = "genops-family"
FAMILY_DEPLOYMENT = "family"
FAMILY_QUEUE = "families"  # family runs; the nightly parent runs from the pool's default queue

DRIFT_FLOW = "genops-drift"
DRIFT_DEPLOYMENT = "hourly"
HOURLY_CRON = "0 * * * *"
DEFAULT_SERVICE_URL = "http://127.0.0.1:3000"


def retrain_deployment() -> str:
    """`<flow>/<deployment>` of the nightly retrain, as `run_deployment` wants it."""
    return f"{PIPELINE_FLOW}/{DEPLOYMENT}"

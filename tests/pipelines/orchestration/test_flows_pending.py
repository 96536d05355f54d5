"""A family run a killed worker left Pending is declared crashed (and so resubmitted).

A narrow unit test: the Prefect client is a stand-in that replays states, because making a
real worker die between claiming a run and starting it is a race (docs/scale-out.md).
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from prefect.states import Completed, Pending

from pipelines.orchestration import pipeline_flow as flows


class _Client:
    def __init__(self, states: dict[str, object]) -> None:
        self.states = states
        self.forced: list[str] = []

    def read_flow_run(self, run_id: str) -> SimpleNamespace:
        return SimpleNamespace(id=run_id, state=self.states[run_id])

    def set_flow_run_state(self, run_id: str, state, force: bool = False) -> None:
        assert force
        self.forced.append(run_id)
        self.states[run_id] = state


@pytest.fixture
def client(monkeypatch):
    fake = _Client({"run-a": Completed(), "run-b": Pending()})

    @contextmanager
    def get_client(sync_client: bool = False):
        assert sync_client
        yield fake

    monkeypatch.setattr("prefect.client.orchestration.get_client", get_client)
    monkeypatch.setattr(flows, "CHILD_POLL_S", 0.01)
    return fake


def test_a_run_pending_past_the_limit_is_marked_crashed(client):
    runs = flows._wait_child_runs({"a": "run-a", "b": "run-b"}, 5.0, pending_timeout_s=0.05)
    assert client.forced == ["run-b"]
    assert runs["a"].state.is_completed() and runs["b"].state.is_crashed()
    assert "Pending" in runs["b"].state.message


def test_without_a_pending_limit_the_wait_times_out_instead(client):
    with pytest.raises(TimeoutError, match="b"):
        flows._wait_child_runs({"a": "run-a", "b": "run-b"}, 0.1, pending_timeout_s=None)
    assert client.forced == []

"""The test launcher survives bentoml's internal port race and still reports real failures."""

from __future__ import annotations

import sys
import textwrap

import pytest

from serving.devserver import MAX_RELAUNCHES, ServeProcess

# First launches fail the way circus does when its probed port was taken in between; then a
# tiny server answers /readyz. `fails` counts the failed launches in a file beside it.
FAKE = textwrap.dedent(
    """
    import http.server, sys
    from pathlib import Path
    counter, fails, port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[-1])
    done = int(counter.read_text()) if counter.exists() else 0
    if done < fails:
        counter.write_text(str(done + 1))
        print("zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:1')")
        sys.exit(1)

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

    http.server.HTTPServer(("127.0.0.1", port), Ready).serve_forever()
    """
)


def fake_server(tmp_path, fails: int) -> type[ServeProcess]:
    script = tmp_path / "fake.py"
    script.write_text(FAKE)

    class Fake(ServeProcess):
        def serve_command(self, target: str) -> list[str]:
            return [sys.executable, str(script), str(tmp_path / "launches"), str(fails)]

    return Fake


def test_a_port_race_at_start_is_retried_on_new_ports(tmp_path):
    server = fake_server(tmp_path, fails=2)(None, tmp_path)
    first_port = server.port
    with server:
        assert server.relaunches == 2
        assert server.client.get("/readyz").status_code == 200
    assert (tmp_path / f"server-{first_port}.log").read_text().count("Address already in use") == 1


def test_a_server_that_keeps_failing_is_reported_with_its_log(tmp_path):
    server = fake_server(tmp_path, fails=MAX_RELAUNCHES + 1)(None, tmp_path)
    with pytest.raises(RuntimeError, match=r"server exited early:\n.*Address already in use"):
        server.wait_ready(timeout=60)
    server.stop()
    assert server.relaunches == MAX_RELAUNCHES

"""The reload notice between workers: a new notice is acted on once, an old one never."""

from __future__ import annotations

import json
import time

from serving.reload_notice import CHECK_EVERY_S, ReloadNotice


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_notice_reaches_the_other_worker_once_and_an_old_one_is_ignored(tmp_path):
    path = tmp_path / "notice.json"
    path.write_text(json.dumps({"token": "left-by-an-earlier-server", "force": True, "pid": 1}))
    calls: dict[str, list[bool]] = {"a": [], "b": []}
    a = ReloadNotice(path, calls["a"].append)
    b = ReloadNotice(path, calls["b"].append)
    a.watch(), b.watch()
    try:
        time.sleep(4 * CHECK_EVERY_S)
        assert calls == {"a": [], "b": []}  # the earlier server's notice is old news
        a.announce(force=True)
        assert _wait_for(lambda: calls["b"] == [True])
        time.sleep(4 * CHECK_EVERY_S)
        assert calls == {"a": [], "b": [True]}  # once, and never to the worker that announced
        b.announce(force=False)
        assert _wait_for(lambda: calls["a"] == [False])
    finally:
        a.stop(), b.stop()

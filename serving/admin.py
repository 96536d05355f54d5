"""The admin API's guard: `/admin/reload` needs the configured GENOPS_ADMIN_TOKEN."""

from __future__ import annotations

import hmac
from typing import Any


def admin_refusal(expected: str, headers: Any) -> str | None:
    """Why an admin request is refused, or None when it carries the configured token."""
    if not expected:
        return (
            "admin API disabled: no GENOPS_ADMIN_TOKEN is configured on the server "
            "(see docs/serving.md, 'Admin token')"
        )
    given = headers.get("x-admin-token", "")
    bearer = headers.get("authorization", "")
    if not given and bearer.lower().startswith("bearer "):
        given = bearer[7:].strip()
    if not given:
        return "missing admin token: send X-Admin-Token (or Authorization: Bearer <token>)"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return "wrong admin token"
    return None

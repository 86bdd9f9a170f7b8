"""What the task and volume halves of the launcher share: the refusal type, new object ids and the clock."""

from __future__ import annotations

import datetime as dt
import secrets
import string

from workloads.quota import FieldError

_ALPHABET = string.ascii_lowercase + string.digits


class Problem(Exception):
    """A request the launcher refuses: an HTTP status and a detail (a message, or a list of field problems); `reason`
    is the refusal's label in the metrics (a word from a fixed set, never user input)."""

    def __init__(self, status: int, detail: str | list[dict[str, str]], *, reason: str = "") -> None:
        self.status = status
        self.detail = detail
        self.reason = reason
        super().__init__(str(detail))


def invalid(errors: list[FieldError], reason: str = "invalid_task") -> Problem:
    return Problem(400, [{"field": e.field, "message": e.message} for e in errors], reason=reason)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(_ALPHABET) for _ in range(7))

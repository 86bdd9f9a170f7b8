"""trainop.kube against a client that refuses: only "not found" counts as deleted (issue 23's defect 1)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.batch_v1 import Job

from trainop.kube import Kube


class RefusingClient:
    """A client whose delete answers with `code` (and records what it was asked)."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.deleted: list[str] = []

    async def delete(self, kind: Any, name: str, **kwargs: Any) -> None:
        self.deleted.append(name)
        raise ApiError(status=Status(code=self.code, message=f"refused with {self.code}"))


def test_a_missing_object_is_deleted_already() -> None:
    client = RefusingClient(404)
    asyncio.run(Kube(client, "ml").delete(Job, "run-a1-train"))  # type: ignore[arg-type]
    assert client.deleted == ["run-a1-train"]


@pytest.mark.parametrize("code", [403, 409, 422, 500, 503])
def test_any_other_refusal_is_raised_not_reported_as_done(code: int) -> None:
    client = RefusingClient(code)
    with pytest.raises(ApiError) as err:
        asyncio.run(Kube(client, "ml").delete_job("run-a1-train"))  # type: ignore[arg-type]
    assert err.value.status.code == code

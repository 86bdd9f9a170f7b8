"""Who is calling: a bearer token checked with the Kubernetes TokenReview API (bound to the launcher's audience),
or, only with the local-development flag on, a trusted `X-Skyrun-User` header. Acting for all users needs a
SubjectAccessReview allow, asked in the platform namespace (SKYRUN_NAMESPACE) whatever the teams: one place where
operators are granted every team's tasks; the launcher itself needs no rights there to ask (a cluster-wide
`create` on subjectaccessreviews)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from skyrun.kube import Kube
from skyrun.service import Problem
from skyrun.settings import Settings

DEV_USER_HEADER = "X-Skyrun-User"


@dataclass(frozen=True)
class Caller:
    user: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)

    def review_user(self) -> dict[str, Any]:
        return {"username": self.user, "groups": list(self.groups), "uid": self.uid, "extra": self.extra}


class Authenticator:
    def __init__(self, kube: Kube, settings: Settings) -> None:
        self.kube = kube
        self.settings = settings
        # token digest -> (expiry, caller or None): an optimisation only; nothing is lost when a server restarts.
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def caller(self, authorization: str | None, dev_user: str | None) -> Caller:
        if self.settings.dev_trusted_user_header and dev_user:
            return Caller(user=dev_user)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Problem(
                401,
                "no bearer token: run `python -m skyrun auth login` (Authorization: Bearer <token>)",
                reason="missing_token",
            )
        token = authorization[7:].strip()
        digest = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(digest)
        if hit and hit[0] > time.monotonic():
            found = hit[1]
        else:
            found = await self._review(token)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self.settings.token_cache_s, found)
        if found is None:
            raise Problem(401, f"the token is not valid for audience {self.settings.audience!r} (expired, revoked, "
                               "or requested without that audience)", reason="invalid_token")  # fmt: skip
        return found

    async def _review(self, token: str) -> Caller | None:
        review = await self.kube.token_review(token, self.settings.audience)
        status = review.get("status") or {}
        if not status.get("authenticated") or self.settings.audience not in (status.get("audiences") or []):
            return None
        user = status.get("user") or {}
        return Caller(
            user=str(user.get("username", "")),
            groups=tuple(user.get("groups") or ()),
            uid=str(user.get("uid") or ""),
            extra={k: list(v) for k, v in (user.get("extra") or {}).items()},
        )

    async def may_act_for_all(self, caller: Caller, verb: str) -> bool:
        return await self.kube.access_review(
            self.settings.namespace, caller.review_user(), verb, self.settings.admin_group, "tasks"
        )

    async def require_all_users(self, caller: Caller, verb: str) -> None:
        if not await self.may_act_for_all(caller, verb):
            raise Problem(
                403,
                f"{caller.user} may not {verb} every user's tasks: that needs `{verb}` on "
                f"{self.settings.admin_group}/tasks in namespace {self.settings.namespace}",
                reason="all_users_denied",
            )

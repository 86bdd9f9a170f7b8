"""The launcher's REST API: `create_app(settings)`; state lives in the cluster (see skyrun/service.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from lightkube import ApiError, AsyncClient, KubeConfig

from skyrun.auth import DEV_USER_HEADER, Authenticator, Caller
from skyrun.kube import Kube
from skyrun.metrics import Metrics, MetricsMiddleware, route_of
from skyrun.models import (
    QueueView,
    StopResponse,
    SubmitRequest,
    SubmitResponse,
    TaskInfo,
    TaskList,
    VolumeCreate,
    VolumeInfo,
    VolumeList,
    WhoAmI,
)
from skyrun.service import Launcher, Problem
from skyrun.settings import Settings

log = logging.getLogger("skyrun")

SUBMIT_ROUTE = "/tasks/submit"
LOGS_ROUTE = "/tasks/{task_id}/logs"


def launcher(request: Request) -> Launcher:
    return request.app.state.launcher  # type: ignore[no-any-return]


async def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_skyrun_user: Annotated[str | None, Header()] = None,
) -> Caller:
    auth: Authenticator = request.app.state.auth
    try:
        return await auth.caller(authorization, x_skyrun_user)
    except Problem as exc:
        request.app.state.metrics.auth_failures.labels(reason=exc.reason or "other").inc()
        raise


Me = Annotated[Caller, Depends(caller)]
Svc = Annotated[Launcher, Depends(launcher)]
AllUsers = Annotated[bool, Query()]


def create_app(settings: Settings, client: AsyncClient | None = None) -> FastAPI:
    """The API; its metrics are in `app.state.metrics.registry`, served apart by `serve` (skyrun/metrics.py)."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # In a pod its ServiceAccount; elsewhere KUBECONFIG.
        kube_client = client or AsyncClient(KubeConfig.from_env(), field_manager="skyrun")
        kube = Kube(kube_client)
        app.state.launcher = Launcher(kube, settings)
        app.state.auth = Authenticator(kube, settings)
        reconciler = asyncio.create_task(_reconcile_forever(app.state.launcher, settings.reconcile_interval_s))
        try:
            yield
        finally:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
            if client is None:
                await kube_client.close()

    app = FastAPI(title="skyrun task launcher", lifespan=lifespan)
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics, streaming_routes=frozenset({LOGS_ROUTE}))
    if settings.dev_trusted_user_header:
        log.warning("LOCAL DEVELOPMENT MODE: the %s header is trusted without any check", DEV_USER_HEADER)

    @app.exception_handler(Problem)
    async def problem(_: Request, exc: Problem) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        if route_of(request.scope) == SUBMIT_ROUTE:
            metrics.submit_rejections.labels(reason="malformed_request").inc()
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(ApiError)
    async def kubernetes_error(_: Request, exc: ApiError) -> JSONResponse:
        log.warning("Kubernetes API error: %s", exc.status.message)
        return JSONResponse({"detail": f"Kubernetes API: {exc.status.message}"}, status_code=502)

    async def scope(request: Request, me: Caller, all_users: bool, verb: str) -> str | None:
        if not all_users:
            return me.user
        try:
            await request.app.state.auth.require_all_users(me, verb)
        except Problem as exc:
            metrics.auth_failures.labels(reason=exc.reason or "other").inc()
            raise
        return None

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        try:
            # A namespace it may read (with teams it has no rights in the platform namespace).
            ns = settings.namespaces()[0]
            await request.app.state.launcher.kube.objects(ns, "ConfigMap", {"skyrun.ml-platform.dev/kind": "probe"})
        except Exception as err:  # any failure to reach the API server: not ready
            return JSONResponse({"status": f"Kubernetes API unreachable: {err}"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/whoami", response_model=WhoAmI)
    async def whoami(request: Request, me: Me) -> WhoAmI:
        allowed = await request.app.state.auth.may_act_for_all(me, "list")
        team = settings.team_of(me.user)
        return WhoAmI(
            user=me.user,
            groups=list(me.groups),
            all_users_allowed=allowed,
            team=team.name if team else "",
            namespace=team.namespace if team else "",
            queue=team.queue if team else "",
        )

    @app.post(SUBMIT_ROUTE, response_model=SubmitResponse)
    async def submit(body: SubmitRequest, me: Me, svc: Svc) -> SubmitResponse:
        try:
            submitted = await svc.submit(me.user, body.task_yaml, body.envs)
        except Problem as exc:
            if exc.status < 500:  # the launcher's own fault (no Deployment to own the task) is no rejection
                metrics.submit_rejections.labels(reason=exc.reason or "other").inc()
            raise
        metrics.tasks_submitted.inc()
        return submitted

    @app.get("/tasks", response_model=TaskList)
    async def list_tasks(request: Request, me: Me, svc: Svc, all_users: AllUsers = False) -> TaskList:
        return TaskList(tasks=await svc.list_tasks(await scope(request, me, all_users, "list")))

    @app.get("/tasks/{task_id}", response_model=TaskInfo)
    async def get_task(task_id: str, me: Me, svc: Svc) -> TaskInfo:
        return await svc.task(me.user, task_id)

    @app.get("/queue", response_model=QueueView)
    async def queue(me: Me, svc: Svc) -> QueueView:
        return await svc.queue(me.user)

    @app.post("/tasks/stop", response_model=StopResponse)
    async def stop_all(request: Request, me: Me, svc: Svc, all_users: AllUsers = False) -> StopResponse:
        return StopResponse(stopped=await svc.stop(await scope(request, me, all_users, "delete"), None))

    @app.post("/tasks/{task_id}/stop", response_model=StopResponse)
    async def stop(task_id: str, me: Me, svc: Svc) -> StopResponse:
        return StopResponse(stopped=await svc.stop(me.user, task_id))

    @app.get(LOGS_ROUTE)
    async def logs(task_id: str, me: Me, svc: Svc, follow: bool = True) -> StreamingResponse:
        lines = await svc.logs(me.user, task_id, follow=follow)
        return StreamingResponse(lines, media_type="text/plain; charset=utf-8")

    @app.post("/volumes/create", response_model=VolumeInfo)
    async def create_volume(body: VolumeCreate, me: Me, svc: Svc) -> VolumeInfo:
        return await svc.create_volume(me.user, body)

    @app.get("/volumes", response_model=VolumeList)
    async def volumes(me: Me, svc: Svc) -> VolumeList:
        return VolumeList(volumes=await svc.volumes(me.user))

    @app.get("/volumes/{volume_id}", response_model=VolumeInfo)
    async def volume(volume_id: str, me: Me, svc: Svc) -> VolumeInfo:
        return await svc.volume(me.user, volume_id)

    @app.delete("/volumes/{volume_id}", response_model=VolumeInfo)
    async def delete_volume(volume_id: str, me: Me, svc: Svc) -> VolumeInfo:
        return await svc.delete_volume(me.user, volume_id)

    return app


async def _reconcile_forever(launcher: Launcher, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await launcher.reconcile()
        except Exception:  # a passing API server outage must not end the loop
            log.exception("reconcile failed; trying again in %.0fs", interval_s)

"""`python -m skyrun`: the launcher's CLI (jobs, volumes, auth) and `serve`, the API server.

The API URL comes from SKYRUN_API_URL, else the config file (SKYRUN_CONFIG, default ~/.config/skyrun/config.yaml,
written by `auth login`); the token from SKYRUN_TOKEN, else that file. Exit codes: 0 done, 1 the task failed or
was cancelled, 2 bad input (the server's 400/422), 3 not authenticated or not allowed, 4 not found, 5 conflict,
6 the server could not be reached or failed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from skyrun.models import (
    QueueView,
    StopResponse,
    SubmitResponse,
    TaskInfo,
    TaskList,
    TaskStatus,
    VolumeInfo,
    VolumeList,
    WhoAmI,
)

EXIT_TASK_FAILED, EXIT_BAD_INPUT, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_SERVER = 1, 2, 3, 4, 5, 6
_EXIT_BY_STATUS = {400: EXIT_BAD_INPUT, 422: EXIT_BAD_INPUT, 401: EXIT_AUTH, 403: EXIT_AUTH, 404: EXIT_NOT_FOUND,
                   409: EXIT_CONFLICT}  # fmt: skip

UNFINISHED = (TaskStatus.PENDING, TaskStatus.RUNNING)
app = typer.Typer(help="Run SkyPilot-style tasks on the platform's cluster.", no_args_is_help=True)
auth_app = typer.Typer(help="Log in with a Kubernetes token.", no_args_is_help=True)
jobs_app = typer.Typer(help="Submit, list, follow and stop tasks.", no_args_is_help=True)
volumes_app = typer.Typer(help="Your volumes (persistent volume claims only you can mount).", no_args_is_help=True)
app.add_typer(auth_app, name="auth")
app.add_typer(jobs_app, name="jobs")
app.add_typer(volumes_app, name="volumes")
out = Console()
err = Console(stderr=True)


def config_path() -> Path:
    return Path(os.environ.get("SKYRUN_CONFIG") or Path.home() / ".config" / "skyrun" / "config.yaml")


def _config() -> dict[str, Any]:
    path = config_path()
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


class Api:
    def __init__(self) -> None:
        config = _config()
        url = os.environ.get("SKYRUN_API_URL") or config.get("api_url")
        if not url:
            _fail("no API URL: set SKYRUN_API_URL or run `auth login --api-url URL`", EXIT_BAD_INPUT)
        headers = {}
        token = os.environ.get("SKYRUN_TOKEN") or config.get("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if os.environ.get("SKYRUN_DEV_USER"):  # only a server started in local-development mode trusts it
            headers["X-Skyrun-User"] = os.environ["SKYRUN_DEV_USER"]
        self.http = httpx.Client(base_url=str(url), headers=headers, timeout=httpx.Timeout(30.0, read=None))

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            response = self.http.request(method, path, **kw)
        except httpx.HTTPError as error:
            _fail(f"cannot reach the launcher at {self.http.base_url}: {error}", EXIT_SERVER)
        if response.status_code >= 400:
            self.refused(response)
        return response.json()

    def refused(self, response: httpx.Response) -> NoReturn:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        if isinstance(detail, list):
            lines = [f"{d.get('field') or '.'.join(map(str, d.get('loc', [])))}: {d.get('message') or d.get('msg')}"
                     for d in detail]  # fmt: skip
            detail = "\n  " + "\n  ".join(lines)
        _fail(f"{detail} (HTTP {response.status_code})", _EXIT_BY_STATUS.get(response.status_code, EXIT_SERVER))

    def stream_logs(self, task_id: str, follow: bool = True) -> None:
        try:
            with self.http.stream("GET", f"/tasks/{task_id}/logs", params={"follow": follow}) as response:
                if response.status_code >= 400:
                    response.read()
                    self.refused(response)
                for line in response.iter_lines():
                    print(line, flush=True)
        except httpx.HTTPError as error:
            _fail(f"log stream ended: {error}", EXIT_SERVER)


# --- auth -------------------------------------------------------------------------------------------------
@auth_app.command("login")
def login(
    token: Annotated[str | None, typer.Option(help="a Kubernetes token bound to the launcher's audience")] = None,
    token_file: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="a file holding it")] = None,
    api_url: Annotated[str | None, typer.Option(help="the launcher's URL (kept in the config file)")] = None,
) -> None:
    """Keep a token (and the API URL) in the config file, then check it with `whoami`."""
    if (token is None) == (token_file is None):
        _fail("give exactly one of --token and --token-file", EXIT_BAD_INPUT)
    value = token if token is not None else token_file.read_text().strip()  # type: ignore[union-attr]
    config = {**_config(), "token": value}
    if api_url:
        config["api_url"] = api_url
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(config))
    whoami()


@app.command()
def whoami() -> None:
    """Who the launcher says you are."""
    me = WhoAmI.model_validate(Api().call("GET", "/whoami"))
    team = f"team {me.team}, namespace {me.namespace}" + (f", queue {me.queue}" if me.queue else "")
    out.print(f"{me.user} ({team if me.team else 'in no team: ask an administrator to add you'})"
              + (" (may act for all users)" if me.all_users_allowed else ""), highlight=False)  # fmt: skip


# --- jobs -------------------------------------------------------------------------------------------------
def _envs(pairs: list[str]) -> dict[str, str]:
    envs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--env {pair!r}: use KEY=VALUE", EXIT_BAD_INPUT)
        envs[key] = value
    return envs


@jobs_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the task YAML")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="return once submitted")] = False,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, overrides the task's envs")] = None,
) -> None:
    """Submit a task; without --detach, follow its logs and exit 1 unless it completes."""
    api = Api()
    body = {"task_yaml": file.read_text(), "envs": _envs(env or [])}
    answer = SubmitResponse.model_validate(api.call("POST", "/tasks/submit", json=body))
    out.print(f"task {answer.task_id}: {answer.status.value} ({answer.message})", highlight=False)
    if detach:
        return
    api.stream_logs(answer.task_id)
    while (task := TaskInfo.model_validate(api.call("GET", f"/tasks/{answer.task_id}"))).status in UNFINISHED:
        time.sleep(1.0)  # the pods' output ended; the Job controller has yet to record the end
    _exit_with(task)


def _exit_with(task: TaskInfo) -> None:
    out.print(f"task {task.task_id}: {task.status.value}" + (f" ({task.message})" if task.message else ""),
              highlight=False)  # fmt: skip
    if task.status.value != "completed":
        raise typer.Exit(EXIT_TASK_FAILED)


@jobs_app.command("list")
def list_jobs(
    details: Annotated[bool, typer.Option("--details", help="resources, image, volumes, nodes")] = False,
    all_users: Annotated[bool, typer.Option("--all-users", help="everyone's tasks (needs the right)")] = False,
) -> None:
    """Your tasks, newest first."""
    tasks = TaskList.model_validate(Api().call("GET", "/tasks", params={"all_users": all_users})).tasks
    table = Table("ID", "NAME", *(["USER"] if all_users else []), "NODES", "STATUS", "SUBMITTED", "MESSAGE")
    if details:
        for column in ("CPUS", "MEMORY", "ACCELERATORS", "IMAGE", "VOLUMES"):
            table.add_column(column)
    for t in tasks:
        row = [t.task_id, t.name, *([t.user] if all_users else []), str(t.num_nodes), t.status.value, t.submitted_at,
               t.message]  # fmt: skip
        if details:
            row += [t.cpus, t.memory, t.accelerators or "-", t.image,
                    ", ".join(f"{p}={v}" for p, v in t.volumes.items()) or "-"]  # fmt: skip
        table.add_row(*row)
    out.print(table)


@jobs_app.command("status")
def status(task_id: str) -> None:
    """One task: its status (and why, when pending or failed) and its nodes."""
    t = TaskInfo.model_validate(Api().call("GET", f"/tasks/{task_id}"))
    table = Table("FIELD", "VALUE", show_header=False)
    for key in ("task_id", "name", "user", "status", "message", "num_nodes", "submitted_at", "finished_at", "cpus",
                "memory", "accelerators", "image", "namespace", "queue", "queue_position",
                "waiting_reason"):  # fmt: skip
        value = getattr(t, key)
        if key.startswith(("queue", "waiting")) and value in ("", None):
            continue
        table.add_row(key, value.value if key == "status" else str(value))
    for node in t.nodes:
        table.add_row(f"node-{node.index}", f"{node.pod} {node.phase}")
    out.print(table)


@app.command("queue")
def queue() -> None:
    """Your tasks that wait in your team's Kueue queue, first in line first, with why they wait."""
    view = QueueView.model_validate(Api().call("GET", "/queue"))
    if not view.queue:
        out.print(f"team {view.team} has no queue: its tasks never wait for Kueue", highlight=False)
        return
    table = Table("POSITION", "ID", "NAME", "NODES", "SUBMITTED", "WAITING BECAUSE",
                  title=f"queue {view.queue} (namespace {view.namespace})")  # fmt: skip
    for t in view.tasks:
        position = "?" if t.queue_position is None else str(t.queue_position)
        table.add_row(position, t.task_id, t.name, str(t.num_nodes), t.submitted_at, t.waiting_reason)
    out.print(table)


@jobs_app.command("logs")
def logs(
    task_id: str, follow: Annotated[bool, typer.Option("--follow/--no-follow", help="until the pods end")] = True
) -> None:
    """Every node's output, `node-{i} | line`."""
    Api().stream_logs(task_id, follow)


@jobs_app.command("stop")
def stop(
    task_id: Annotated[str | None, typer.Argument()] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="every pending or running task of yours")] = False,
    all_users: Annotated[bool, typer.Option("--all-users", help="with --all: everyone's (needs the right)")] = False,
) -> None:
    """Stop a task (or --all): its pods are deleted at once."""
    if (task_id is None) == (not all_tasks) or (all_users and not all_tasks):
        _fail("give a task id, or --all [--all-users]", EXIT_BAD_INPUT)
    api = Api()
    if task_id is not None:
        answer = StopResponse.model_validate(api.call("POST", f"/tasks/{task_id}/stop"))
    else:
        answer = StopResponse.model_validate(api.call("POST", "/tasks/stop", params={"all_users": all_users}))
    out.print(f"stopped: {', '.join(answer.stopped) or 'nothing'}", highlight=False)


# --- volumes ----------------------------------------------------------------------------------------------
@volumes_app.command("create")
def create_volume(
    name: str,
    size: Annotated[str, typer.Argument(help="GiB (10) or a quantity (10Gi)")],
    storage_class: Annotated[str | None, typer.Option("--storage-class")] = None,
    access_modes: Annotated[list[str] | None, typer.Option("--access-modes", help="repeatable")] = None,
) -> None:
    """Create a volume only you can mount (`volumes: {/data: NAME}` in a task)."""
    modes = access_modes or ["ReadWriteOnce"]
    body = {"name": name, "size": size, "storage_class": storage_class, "access_modes": modes}
    v = VolumeInfo.model_validate(Api().call("POST", "/volumes/create", json=body))
    out.print(f"volume {v.volume_id}: {v.name} {v.size}", highlight=False)


@volumes_app.command("list")
def list_volumes() -> None:
    """Your volumes."""
    volumes = VolumeList.model_validate(Api().call("GET", "/volumes")).volumes
    table = Table("ID", "NAME", "SIZE", "STORAGE CLASS", "ACCESS MODES", "PHASE", "IN USE BY")
    for v in volumes:
        table.add_row(v.volume_id, v.name, v.size, v.storage_class or "-", ",".join(v.access_modes), v.phase,
                      ", ".join(v.in_use_by) or "-")  # fmt: skip
    out.print(table)


@volumes_app.command("delete")
def delete_volume(
    volume_id: str, force: Annotated[bool, typer.Option("--force", "-f", help="do not ask")] = False
) -> None:
    """Delete a volume and its data (asks first)."""
    api = Api()
    v = VolumeInfo.model_validate(api.call("GET", f"/volumes/{volume_id}"))
    if not force and not typer.confirm(f"delete volume {v.name} ({v.size}) and all its data?"):
        _fail("not deleted", EXIT_CONFLICT)
    api.call("DELETE", f"/volumes/{volume_id}")
    out.print(f"deleted volume {v.volume_id} ({v.name})", highlight=False)


# --- the server -------------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to bind (default SKYRUN_HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default SKYRUN_PORT or 8000)")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="port of /metrics, on the same address (default SKYRUN_METRICS_PORT or 9090)")
    ] = None,
) -> None:
    """Run the API server and its metrics endpoint (settings from SKYRUN_* variables, docs/launcher.md)."""
    import uvicorn
    from pydantic import ValidationError

    from skyrun.app import create_app
    from skyrun.metrics import serve_metrics
    from skyrun.settings import Settings

    chosen = {"host": host, "port": port, "metrics_port": metrics_port}
    try:
        settings = Settings(**{k: v for k, v in chosen.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as bad:
        _fail(f"bad SKYRUN_* settings, not starting:\n{bad}", EXIT_BAD_INPUT)
    api = create_app(settings)
    metrics_server, _ = serve_metrics(api.state.metrics.registry, settings.host, settings.metrics_port)
    try:
        uvicorn.run(api, host=settings.host, port=settings.port, log_level="info")
    finally:
        metrics_server.shutdown()
        metrics_server.server_close()


def main() -> None:
    app(prog_name="python -m skyrun")


if __name__ == "__main__":
    main()

"""The observability tier's Go-built tools (tests/observability/toolchain.sh): where they are, and PromQL checks.

Importable by any test module; the fixtures in conftest.py use `toolchain_dir` and `require`.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness.wait import eventually
from tests.proc import stop_group

HERE = Path(__file__).resolve().parent
TOOLCHAIN_SH = HERE / "toolchain.sh"
# What the toolchain directory must hold (the CRDs' file names are the operator's, under crds/).
MONITORING_CRDS = tuple(
    f"crds/monitoring.coreos.com_{plural}.yaml" for plural in ("podmonitors", "servicemonitors", "prometheusrules")
)
BUILD_COMMAND = f"bash {TOOLCHAIN_SH.relative_to(HERE.parent.parent)}"


def toolchain_dir() -> Path:
    """ML_PLATFORM_OBS_TOOLCHAIN, else the keyed directory toolchain.sh would build (`--print-dir`)."""
    env = os.environ.get("ML_PLATFORM_OBS_TOOLCHAIN")
    if env:
        return Path(env)
    out = subprocess.run(
        ["bash", str(TOOLCHAIN_SH), "--print-dir"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return Path(out.strip().splitlines()[-1])


def missing(directory: Path, *names: str) -> list[str]:
    """Which of `names` (paths relative to the toolchain directory) are not files there."""
    return [name for name in names if not (directory / name).is_file()]


def how_to_build(directory: Path, lacks: list[str]) -> str:
    """The failure message for a toolchain directory that lacks `lacks`: the exact command that builds them."""
    chosen = (
        f" (ML_PLATFORM_OBS_TOOLCHAIN chose {directory}: unset it, or set it to the directory that command prints)"
        if os.environ.get("ML_PLATFORM_OBS_TOOLCHAIN")
        else ""
    )
    return (
        f"the observability toolchain is not built ({directory} lacks {', '.join(lacks)}): run `{BUILD_COMMAND}` "
        "from the repository root (it builds promtool and prometheus from Go modules and copies the Prometheus "
        f"Operator CRDs; its last line is the directory){chosen}, or deselect these tests with -m 'not prometheus'"
    )


def check_promql(promtool: Path, expr: str) -> str | None:
    """None when `expr` is a valid PromQL expression, else promtool's parse error (e.g. `1:5: parse error:
    unexpected right parenthesis ')'`).

    Uses `promtool --experimental promql format EXPR`, which runs Prometheus's own parser (promql/parser.ParseExpr,
    the one `promtool check rules` and the server use) on exactly the expression given: no rule file around it, so
    the error's line:column positions are the expression's own. Grafana template variables ($namespace,
    $__rate_interval) are not PromQL: substitute them before calling.
    """
    proc = subprocess.run(
        [str(promtool), "--experimental", "promql", "format", expr],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode == 0:
        return None
    error = (proc.stderr or proc.stdout).strip()
    return error or f"promtool exited with {proc.returncode} and no message"


class PrometheusServer:
    """A real `prometheus` on 127.0.0.1 with its own storage, started by `start()`, queried through its HTTP API.

    Stopped (process group, SIGTERM then SIGKILL) by `stop()`; call it in a `finally`.
    """

    def __init__(
        self,
        binary: Path,
        directory: Path,
        config: dict[str, Any],
        *,
        prefix: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        """`prefix` goes before the command (e.g. `nsenter --net=...`: then 127.0.0.1:`port` is that namespace's,
        and `url` must be set to a forward of it before `wait_ready`); `extra_args` after its flags."""
        self.binary = binary
        self.directory = directory
        self.prefix = list(prefix)
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    str(self.binary),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=info",
                    *self.extra_args,
                ],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /-/ready answers 200 (the TSDB is open, the config loaded)."""

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, f"prometheus exited:\n{self.log()}"
            return httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200

        try:  # not listening yet: a transport error, tried again
            eventually(f"prometheus {self.url}/-/ready to answer 200", ready, timeout, 0.2,
                       retry_on=(httpx.TransportError,))  # fmt: skip
        except TimeoutError as err:
            raise AssertionError(f"{err}\n{self.log()}") from None

    def api(self, path: str, **params: str) -> Any:
        """`data` of a /api/v1/<path> answer (asserts status success)."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data}"
        return list(data["result"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_group(self.process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

"""`python -m demo`: the platform's pieces on this machine, no cluster needed (`make demo`).

The same processes the cluster runs, started as local processes with embedded defaults:

1. an MLflow tracking server (sqlite and served artifacts under the state directory, on 127.0.0.1);
2. `python -m trainer launch --nproc 2` (the Indexed Job emulated: two DDP ranks over gloo) on the built-in
   corpus, logging to MLflow, registering the model and moving the alias `champion`; each rank serves its
   Prometheus metrics on 127.0.0.1 (two free consecutive ports from 9400; the demo prints where);
3. `python -m inference serve` loading `models:/<name>@champion` from MLflow;
4. a completion through the official `openai` client;
5. a burst of completions, timed by the client and by the server's own /metrics (demo/observe.py);
6. a loss-curve PNG from the MLflow metrics, and one PNG with the loss curve, the burst's latency per request
   and its throughput;

then it stops what it started (or keeps the servers up with `--keep-running` until Ctrl-C). Every process runs
in its own process group and is stopped on exit, Ctrl-C or SIGTERM, so nothing outlives the demo.

This package only starts processes and talks HTTP (MLflow's client, the `openai` client); it imports neither the
trainer nor the inference package, and nothing imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from demo import figures, observe
from workloads.contracts import TRAINER_METRICS_PORT

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "tiny-gpt"
ALIAS = "champion"
EXPERIMENT = "local-demo"
# A schedule that trains to readable (if silly) text in a minute or two on 2 cores; `--steps` shortens it.
DEMO_TRAIN: dict[str, dict[str, Any]] = {
    "data": {"source": "python-docs", "val_fraction": 0.1},
    "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0},
    "train": {"batch_size": 12, "max_steps": 600, "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 50,
              "eval_every": 200, "eval_iters": 10, "threads_per_rank": 1, "log_every": 50},
    "checkpoint": {"every": 200, "keep": 2},
    "tracking": {"experiment": EXPERIMENT, "model_name": MODEL_NAME, "alias": ALIAS},
}  # fmt: skip
PROMPT = "The "


class DemoError(RuntimeError):
    """Something the user can fix (a port in use, a server that did not start); the message says what."""


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_run(count: int, start: int = TRAINER_METRICS_PORT, tries: int = 200) -> int:
    """The first port from `start` on 127.0.0.1 such that it and the `count - 1` after it are free."""
    for base in range(start, min(start + tries, 65536 - count)):
        if all(port_free(port) for port in range(base, base + count)):
            return base
    raise DemoError(f"no {count} consecutive free ports on 127.0.0.1 in {start}..{start + tries}")


def wait_http(name: str, url: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll `url` until it answers 200; fail early, pointing at the log, if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"{name} exited with {proc.returncode} while starting; see {log}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise DemoError(f"{url} did not answer within {timeout_s:.0f}s; see {log}")


@dataclass
class Processes:
    """Children started in their own process groups; `stop_all` ends each group, politely then firmly."""

    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str], log: Path | None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else None  # noqa: SIM115 - the child owns it for its lifetime
        proc = subprocess.Popen(
            list(cmd), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT if out else None,
            start_new_session=True,  # Ctrl-C reaches us, not them; we stop them in order
        )  # fmt: skip
        if out:
            out.close()
        self.running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Ranks and server workers share the group; make sure none is left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name, proc in reversed(self.running):
            if proc.poll() is None:
                print(f"stopping {name} (pid {proc.pid})", flush=True)
            self.stop(proc)
        self.running.clear()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT both raise KeyboardInterrupt, so either stops everything the demo started. SIGINT is
    set explicitly: a shell without job control starts background commands with SIGINT ignored, and Python then
    keeps ignoring it (Ctrl-C or `kill -INT` would do nothing)."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def train_config(state: Path, steps: int | None, run_dir: Path) -> Path:
    config = yaml.safe_load(yaml.safe_dump(DEMO_TRAIN))
    config["checkpoint"]["dir"] = str(run_dir)
    if steps is not None:
        config["train"].update(max_steps=steps, warmup_steps=min(50, steps // 4),
                               eval_every=max(1, steps // 2), log_every=max(1, steps // 5))  # fmt: skip
        config["checkpoint"]["every"] = max(1, steps // 2)
    path = state / "train.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def latest_run(tracking_uri: str) -> tuple[str, str, float | None]:
    """(run id, model version, val loss) of the newest run of the demo experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise DemoError(f"MLflow has no experiment {EXPERIMENT!r}: the trainer logged nothing")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    run = runs[0]
    versions = client.search_model_versions(f"name='{MODEL_NAME}' and run_id='{run.info.run_id}'")
    version = max((v.version for v in versions), key=int, default="?")
    return run.info.run_id, str(version), run.data.metrics.get("val_loss")


def complete(base_url: str, prompt: str, max_tokens: int) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed-locally", max_retries=0, timeout=60)
    response = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0.8,
                                         seed=1)  # fmt: skip
    return response.choices[0].text


def run(args: argparse.Namespace) -> int:
    state: Path = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    for what, port in (("MLflow", args.mlflow_port), ("inference", args.inference_port)):
        if not port_free(port):
            raise DemoError(
                f"port {port} on 127.0.0.1 (for {what}) is in use, perhaps by an earlier demo started with "
                f"--keep-running or by the kind cluster's port mapping; stop it or pick another with "
                f"--{what.lower()}-port"
            )
    tracking_uri = f"http://127.0.0.1:{args.mlflow_port}"
    inference_url = f"http://127.0.0.1:{args.inference_port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    procs = Processes()
    try:
        print(f"[1/6] MLflow tracking server on {tracking_uri} (state in {state})", flush=True)
        mlflow_log = state / "mlflow.log"
        mlflow = procs.start(
            "mlflow server",
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(args.mlflow_port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{state / 'mlflow.db'}",
             "--artifacts-destination", str(state / "artifacts"), "--serve-artifacts"],
            env, mlflow_log,
        )  # fmt: skip
        wait_http("mlflow server", f"{tracking_uri}/health", 120, mlflow, mlflow_log)

        run_dir = state / "checkpoints" / time.strftime("run-%Y%m%d-%H%M%S")
        config = train_config(state, args.steps, run_dir)
        metrics_port = free_port_run(2)
        print(f"[2/6] training: python -m trainer launch --nproc 2 --config {config} "
              f"--set metrics.port={metrics_port}", flush=True)  # fmt: skip
        urls = ", ".join(f"rank {r} http://127.0.0.1:{metrics_port + r}/metrics" for r in range(2))
        print(f"      Prometheus metrics while it trains: {urls}", flush=True)
        trainer = procs.start("trainer", [sys.executable, "-m", "trainer", "launch", "--nproc", "2",
                                          "--config", str(config), "--set", f"metrics.port={metrics_port}"],
                              env, None)  # fmt: skip
        if trainer.wait() != 0:
            raise DemoError(f"training failed with exit code {trainer.returncode} (its output is above)")
        run_id, version, val_loss = latest_run(tracking_uri)
        shown = f"{val_loss:.3f}" if val_loss is not None else "n/a"
        print(f"      run {run_id}: val_loss {shown}, registered {MODEL_NAME} version {version}", flush=True)

        print(f"[3/6] inference service on {inference_url} serving models:/{MODEL_NAME}@{ALIAS}", flush=True)
        inference_log = state / "inference.log"
        server = procs.start(
            "inference",
            [sys.executable, "-m", "inference", "serve", "--host", "127.0.0.1", "--port", str(args.inference_port),
             "--model-uri", f"models:/{MODEL_NAME}@{ALIAS}"],
            {**env, "INFERENCE_CACHE_DIR": str(state / "model-cache")}, inference_log,
        )  # fmt: skip
        wait_http("inference", f"{inference_url}/readyz", 180, server, inference_log)

        print(f"[4/6] a completion through the openai client (prompt {PROMPT!r}):", flush=True)
        text = complete(inference_url, PROMPT, args.max_tokens)
        print("      " + (PROMPT + text).replace("\n", "\n      "), flush=True)

        lengths = f"{min(observe.MAX_TOKENS)}-{max(observe.MAX_TOKENS)}"
        print(f"[5/6] {args.burst} completions, {args.burst_concurrency} at a time (max_tokens {lengths}), timed by "
              f"the client and by the server's {inference_url}/metrics", flush=True)  # fmt: skip
        burst = observe.burst(inference_url, MODEL_NAME, requests=args.burst, concurrency=args.burst_concurrency)
        if not burst.ok:
            statuses = sorted({r.status for r in burst.requests})
            raise DemoError(f"no completion of the burst succeeded (HTTP status {statuses}); see {inference_log}")
        print(f"      {burst.summary()}", flush=True)

        title = f"{MODEL_NAME}: 2 DDP ranks on the built-in corpus (MLflow run {run_id[:8]})"
        png = figures.loss_curve(tracking_uri, run_id, title, state / "loss-curve.png")
        figure = figures.metrics_figure(tracking_uri, run_id, title, burst, state / "metrics.png")
        print(f"[6/6] loss curve: {png}", flush=True)
        print(f"      metrics:    {figure} (loss | latency per request, p50/p95/p99 | requests/s, tokens/s)",
              flush=True)  # fmt: skip
        print(f"\nMLflow UI:  {tracking_uri}/#/experiments  (run {run_id})", flush=True)
        print(f"Inference:  {inference_url}/v1/completions  (also /v1/models, /metrics, /readyz)", flush=True)
        if args.keep_running:
            print("Servers keep running; press Ctrl-C to stop them.", flush=True)
            while all(p.poll() is None for _, p in procs.running if p is not trainer):
                time.sleep(1)
            raise DemoError("a server stopped unexpectedly; see the logs in " + str(state))
        return 0
    finally:
        procs.stop_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".state" / "demo", help="where everything is kept")
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--inference-port", type=int, default=8092)
    parser.add_argument("--steps", type=int, help="train this many steps instead of the demo schedule")
    parser.add_argument("--max-tokens", type=int, default=120, help="length of the sample completion")
    parser.add_argument("--burst", type=int, default=48, help="completions sent for the metrics figure (>= 1)")
    parser.add_argument("--burst-concurrency", type=int, default=8, help="of those, how many at a time (>= 1)")
    parser.add_argument("--keep-running", action="store_true", help="leave MLflow and inference up until Ctrl-C")
    args = parser.parse_args(argv)
    if args.burst < 1 or args.burst_concurrency < 1:
        parser.error("--burst and --burst-concurrency must be >= 1")
    try:
        with sigterm_as_interrupt():
            return run(args)
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything the demo started is stopped", file=sys.stderr)
        return 130

"""The local platform demo (`make demo` = `python -m demo`): real MLflow server, 2-rank DDP training with its
metrics endpoints, inference service, an openai-client completion, a burst of completions drawn with the loss curve
in one PNG; and it cleans up after itself, also when interrupted. Also the pieces of that figure: the Prometheus
text parsing and PromQL's histogram_quantile (checked against promtool itself), the throughput windows."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from demo import figures, observe, promtext
from demo.runner import DemoError, free_port_run
from tests.harness.wait import eventually
from tests.observability.promtools import how_to_build, missing, toolchain_dir

ROOT = Path(__file__).resolve().parents[1]
TRAINER_DEFAULT_METRICS_PORT = 9400
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SUMMARY = re.compile(
    r"(?P<ok>\d+)/(?P<sent>\d+) ok(?: \(\d+ failed\))? in [\d.]+s: [\d.]+ requests/s, \d+ generated tokens/s; "
    r"latency p50 (?P<p50>[\d.e-]+)s p95 (?P<p95>[\d.e-]+)s p99 (?P<p99>[\d.e-]+)s \(server histogram, "
    r"interpolated in its buckets\), client p50 (?P<c50>[\d.e-]+)s p95 (?P<c95>[\d.e-]+)s p99 (?P<c99>[\d.e-]+)s"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_command(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "demo", "--state-dir", str(state), "--mlflow-port", str(free_port()),
            "--inference-port", str(free_port()), *extra]  # fmt: skip


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and that matplotlib can decode it."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is no PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert matplotlib.image.imread(path).shape[:2] == (height, width)
    return width, height


@contextlib.contextmanager
def holding(port: int) -> Iterator[None]:
    """Keep `port` on 127.0.0.1 busy while the block runs. Another process may hold it now (a trainer of a test
    running beside this one) and free it at any moment, so wait until this test holds it itself."""
    with socket.socket() as sock:

        def bound() -> bool:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

        eventually(f"port {port} free for this test to hold", bound, 120, retry_on=())
        sock.listen()
        yield


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def kill_mentioning(text: str) -> None:
    """SIGKILL every process whose command line mentions `text`: what a failed test leaves must not outlive it."""
    for line in processes_mentioning(text):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def steps_done(metrics_url: str) -> float:
    """The step a rank has reached, from its Prometheus endpoint (0 before its first step)."""
    text = httpx.get(metrics_url, timeout=5).text
    return max((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("trainer_step{")),
               default=0.0)  # fmt: skip


def wait_gone(text: str, timeout_s: float = 30.0) -> None:
    """Until no process's command line mentions `text`; a timeout names the ones left."""
    left: list[str] = []

    def gone() -> bool:
        left[:] = processes_mentioning(text)
        return not left

    try:
        eventually(f"no process mentioning {text}", gone, timeout_s, 0.5, retry_on=())
    except TimeoutError as err:
        raise AssertionError(f"{err}; left: {left}") from None


@pytest.mark.slow
def test_demo_end_to_end_and_leaves_nothing_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with holding(TRAINER_DEFAULT_METRICS_PORT):  # a busy default metrics port must not break the demo
        result = subprocess.run(demo_command(state, "--steps", "12", "--max-tokens", "24"), cwd=ROOT,
                                capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for marker in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]", "MLflow UI:", "Inference:"):
        assert marker in out
    assert "registered tiny-gpt version 1" in out
    assert (state / "loss-curve.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (state / "mlflow.db").exists() and any((state / "checkpoints").rglob("COMPLETE"))

    # Where each rank's metrics are: printed by the demo, and the ranks really served them there.
    base = int(re.search(r"--set metrics\.port=(\d+)", out).group(1))  # type: ignore[union-attr]
    assert base != TRAINER_DEFAULT_METRICS_PORT
    assert f"rank 0 http://127.0.0.1:{base}/metrics, rank 1 http://127.0.0.1:{base + 1}/metrics" in out
    for rank in (0, 1):
        assert f"rank {rank}: metrics at http://127.0.0.1:{base + rank}/metrics" in result.stderr

    # The burst and its figure: every request answered, the server's quantiles in order, one sensible PNG.
    summary = SUMMARY.search(out)
    assert summary, out
    assert summary["ok"] == summary["sent"] == "48"
    for source in ("p", "c"):  # server histogram, client timings
        assert 0 < float(summary[f"{source}50"]) <= float(summary[f"{source}95"]) <= float(summary[f"{source}99"]) < 60
    assert f"metrics:    {state / 'metrics.png'}" in out
    width, height = png_size(state / "metrics.png")
    assert width >= 1200 and 300 <= height <= width and 20_000 < (state / "metrics.png").stat().st_size < 2_000_000
    wait_gone(str(state))

    # A second run starts a new training run cleanly and registers the next version.
    again = subprocess.run(demo_command(state, "--steps", "12", "--max-tokens", "8", "--burst", "4"), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "registered tiny-gpt version 2" in again.stdout
    assert "4/4 ok" in again.stdout
    wait_gone(str(state))


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "demo", "--state-dir", str(tmp_path), "--mlflow-port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--mlflow-port" in result.stderr


@pytest.mark.slow
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(demo_command(state, "--steps", "100000"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Prometheus metrics while it trains:" in line:  # the line after "[2/6]"
                break
        urls = re.findall(r"http://\S+/metrics", seen[-1])
        assert len(urls) == 2, "".join(seen)
        eventually("both ranks up and training", lambda: all(steps_done(url) >= 1 for url in urls), 120)
        assert processes_mentioning(str(state)), "nothing was running to interrupt"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    except BaseException:  # only on failure: on success the assertions below check the demo left nothing
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_mentioning(str(state))
        raise
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    wait_gone(str(state))


def test_burst_options_are_checked(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "demo", "--state-dir", str(tmp_path), "--burst", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--burst and --burst-concurrency must be >= 1" in result.stderr


def test_free_port_run_skips_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        base = free_port_run(2, start=port)
        assert base > port  # neither the busy port nor a run that contains it
    with pytest.raises(DemoError, match="no 2 consecutive free ports"):
        free_port_run(2, start=port, tries=0)


# --- the numbers of the figure --------------------------------------------------------------------------------
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def exposition(observations: list[float], tokens: int) -> str:
    """/metrics text of a registry shaped like the inference server's (and a second route to ignore)."""
    registry = CollectorRegistry()
    latency = Histogram(observe.LATENCY, "latency", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    for seconds in observations:
        latency.labels(route=observe.ROUTE).observe(seconds)
    latency.labels(route="/readyz").observe(0.001)
    Counter("inference_generated_tokens", "tokens", registry=registry).inc(tokens)
    return generate_latest(registry).decode()


def test_buckets_and_values_are_read_from_the_exposition_text() -> None:
    before = exposition([0.02, 0.3], tokens=5)
    after = exposition([0.02, 0.3, 0.3, 0.7, 3.0], tokens=45)
    labels = {"route": observe.ROUTE}
    first = promtext.buckets(before, observe.LATENCY, labels)
    assert list(first) == [*LATENCY_BUCKETS, math.inf]  # sorted, +Inf last
    assert first[0.025] == 1 and first[0.5] == 2 and first[math.inf] == 2
    grown = promtext.bucket_increase(first, promtext.buckets(after, observe.LATENCY, labels))
    assert grown[0.25] == 0 and grown[0.5] == 1 and grown[1.0] == 2 and grown[5.0] == grown[math.inf] == 3
    assert promtext.value(after, observe.GENERATED) - promtext.value(before, observe.GENERATED) == 40
    assert promtext.value(after, "inference_requests_total", {"route": "/nowhere"}) == 0  # absent: 0
    every_route = promtext.buckets(after, observe.LATENCY)
    assert every_route[math.inf] == 6  # without a label filter the routes add up


# (q, cumulative buckets, what PromQL's histogram_quantile answers)
QUANTILE_CASES = [
    (0.5, {0.1: 10, 0.5: 30, 1.0: 40, math.inf: 40}, 0.3),  # rank 20 in (0.1, 0.5]: 0.1 + 0.4 * 10/20
    (0.95, {0.1: 10, 0.5: 30, 1.0: 40, math.inf: 40}, 0.9),  # rank 38 in (0.5, 1]: 0.5 + 0.5 * 8/10
    (1.0, {0.1: 10, 0.5: 30, 1.0: 40, math.inf: 40}, 1.0),
    (0.0, {0.1: 10, 0.5: 30, 1.0: 40, math.inf: 40}, 0.0),
    (0.5, {0.005: 0, 0.01: 0, 0.025: 4, math.inf: 4}, 0.0175),  # empty buckets below: start at 0.01
    (0.99, {0.1: 1, 0.25: 2, math.inf: 10}, 0.25),  # in the +Inf bucket: the largest finite bound
    (0.5, {0.1: 3, 0.2: 3, 0.4: 6, math.inf: 6}, 0.1),  # rank 3 reached in the first bucket already
]


@pytest.mark.parametrize(("q", "cumulative", "expected"), QUANTILE_CASES)
def test_histogram_quantile_interpolates_as_promql(q: float, cumulative: dict[float, float], expected: float) -> None:
    assert promtext.histogram_quantile(q, cumulative) == pytest.approx(expected)


def test_histogram_quantile_edges() -> None:
    assert math.isnan(promtext.histogram_quantile(0.5, {0.1: 0, math.inf: 0}))  # nothing observed
    with pytest.raises(ValueError, match="le=\\+Inf"):
        promtext.histogram_quantile(0.5, {0.1: 1, 0.2: 2})
    with pytest.raises(ValueError, match="not in"):
        promtext.histogram_quantile(1.5, {0.1: 1, math.inf: 1})


@pytest.mark.prometheus
def test_histogram_quantile_agrees_with_promtool(tmp_path: Path) -> None:
    """The same cases evaluated by PromQL itself (`promtool test rules`, promql_expr_test)."""
    directory = toolchain_dir()
    if lacks := missing(directory, "promtool"):
        pytest.fail(how_to_build(directory, lacks), pytrace=False)
    tests = []
    for i, (q, cumulative, expected) in enumerate(QUANTILE_CASES):
        series = [{"series": f'h_bucket{{case="{i}",le="{"+Inf" if math.isinf(le) else le}"}}', "values": str(n)}
                  for le, n in cumulative.items()]  # fmt: skip
        ours = promtext.histogram_quantile(q, cumulative)
        assert ours == pytest.approx(expected)
        tests.append({
            "interval": "1m", "input_series": series,
            "promql_expr_test": [{"expr": f'histogram_quantile({q}, h_bucket{{case="{i}"}})', "eval_time": "0m",
                                  "exp_samples": [{"labels": f'{{case="{i}"}}', "value": ours}]}],
        })  # fmt: skip
    (tmp_path / "quantiles_test.yaml").write_text(yaml.safe_dump({"rule_files": [], "tests": tests}))
    run = subprocess.run([str(directory / "promtool"), "test", "rules", "quantiles_test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


class FakeInference(BaseHTTPRequestHandler):
    """/metrics and /v1/completions as the inference server exposes them; every 4th seed gets a 429."""

    registry = CollectorRegistry()
    latency = Histogram(observe.LATENCY, "latency", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    generated = Counter("inference_generated_tokens", "tokens", registry=registry)
    lock = threading.Lock()
    in_flight = peak = 0

    def do_GET(self) -> None:
        self._send(200, generate_latest(self.registry), "text/plain; version=0.0.4")

    def do_POST(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.peak = max(cls.peak, cls.in_flight)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.02)
        with cls.lock:
            cls.in_flight -= 1
        self.latency.labels(route=self.path).observe(0.02)
        if body["seed"] % 4 == 3:
            self._send(429, b'{"error": "busy"}', "application/json")
            return
        self.generated.inc(body["max_tokens"])
        usage = {"prompt_tokens": 4, "completion_tokens": body["max_tokens"], "total_tokens": 4 + body["max_tokens"]}
        self._send(200, json.dumps({"usage": usage}).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_burst_times_every_request_and_reads_the_servers_metrics() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeInference)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        FakeInference.generated.inc(1000)  # before the burst: must not count
        url = f"http://127.0.0.1:{server.server_address[1]}"
        burst = observe.burst(url, "tiny-gpt", requests=20, concurrency=3, timeout_s=10)
    finally:
        server.shutdown()
        server.server_close()
    assert len(burst.requests) == 20 and len(burst.ok) == 15
    assert sorted({r.status for r in burst.requests}) == [200, 429]
    assert 1 <= FakeInference.peak <= 3  # never more than `concurrency` at once
    assert all(r.latency_s >= 0.02 and r.finished_s <= burst.duration_s + 1e-6 for r in burst.requests)
    assert (
        burst.server_tokens
        == sum(r.tokens for r in burst.requests)
        == sum(observe.MAX_TOKENS[i % 4] for i in range(20) if i % 4 != 3)
    )
    assert burst.server_latency[0.025] == burst.server_latency[math.inf] == 20  # every request, 429s included
    assert burst.server_quantiles()[0.5] == pytest.approx(0.01 + 0.015 * 0.5)


def request(started: float, latency: float, status: int = 200, tokens: int = 16) -> observe.Request:
    return observe.Request(started_s=started, latency_s=latency, status=status, tokens=tokens)


def test_throughput_counts_successes_by_when_they_finished() -> None:
    requests = [
        request(0.0, 0.4),
        request(0.1, 0.6),
        request(0.2, 1.1, tokens=8),
        request(0.3, 0.1, status=429, tokens=0),
    ]
    assert observe.throughput(requests, 0.5) == [(0.5, 2.0, 32.0), (1.0, 2.0, 32.0), (1.5, 2.0, 16.0)]
    assert observe.throughput([request(0.0, 1.0, status=0, tokens=0)], 0.5) == []


BURST = observe.Burst(
    requests=[request(0.0, 0.2), request(0.0, 0.4), request(0.1, 0.3, status=429, tokens=0)],
    duration_s=0.5,
    server_latency={0.1: 0, 0.25: 1, 0.5: 3, math.inf: 3},
    server_tokens=32,
)


def test_percentile_interpolates_between_ranks() -> None:
    assert observe.percentile([0.4, 0.2], 0.5) == pytest.approx(0.3)
    assert observe.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert observe.percentile([7.0], 0.99) == 7.0
    assert math.isnan(observe.percentile([], 0.5))


def test_summary_names_the_source_of_each_figure() -> None:
    line = BURST.summary()
    assert line.startswith("2/3 ok (1 failed) in 0.5s: 4.0 requests/s, 64 generated tokens/s; latency p50 0.312s")
    assert line.endswith("(server histogram, interpolated in its buckets), client p50 0.3s p95 0.39s p99 0.398s")
    assert SUMMARY.search(line)


@pytest.mark.slow
def test_metrics_figure_is_one_png_with_three_panels(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("figure")).info.run_id
    for step in range(1, 6):
        client.log_metric(run_id, "train_loss", 3 - step / 10, step=step * 10)
    client.log_metric(run_id, "val_loss", 2.5, step=50)
    empty = observe.Burst(BURST.requests, 0.5, {0.1: 0, math.inf: 0}, 0)  # no server quantiles: NaN, not drawn
    for burst, name in ((BURST, "metrics.png"), (empty, "empty.png")):
        out = figures.metrics_figure(uri, run_id, "title", burst, tmp_path / name)
        assert png_size(out) == (1600, 450)

"""`python -m rollout`: the gate's one process. Settings from ROLLOUT_* (rollout/settings.py); its own `/metrics`
and `/healthz` on ROLLOUT_PORT. Exit code 2: invalid settings."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from mlflow import MlflowClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rollout.gate import Gate
from rollout.metrics import GateMetrics
from rollout.registry import Registry
from rollout.settings import Settings, SettingsError, load_settings
from rollout.targets import StaticTargets

log = logging.getLogger("rollout")


def serve_http(settings: Settings, metrics: GateMetrics, gate: Gate, stale_after_s: float) -> ThreadingHTTPServer:
    """`/metrics`, and `/healthz`: 200 while rounds keep ending (failed ones too: an MLflow outage is not cured by
    a restart, which would only restart the window), 503 once none ended for `stale_after_s` (a stuck loop)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                age = time.time() - gate.last_round_at
                ok = age < stale_after_s
                self._answer(200 if ok else 503, f"{'ok' if ok else 'stuck'}: last round {age:.0f} s ago\n".encode())
            else:
                self._answer(404, b"not found: /metrics or /healthz\n")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not worth a line
            pass

    server = ThreadingHTTPServer((settings.host, settings.port), Handler)
    threading.Thread(target=server.serve_forever, name="rollout-http", daemon=True).start()
    return server


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
    except SettingsError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    metrics = GateMetrics()
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    registry = Registry(client, settings.model_name, settings.champion_alias, settings.challenger_alias)
    http = httpx.Client(timeout=settings.scrape_timeout_s)
    gate = Gate(registry, StaticTargets(settings.targets), settings.thresholds, http, metrics)
    stale_after_s = 3 * settings.interval_s + settings.scrape_timeout_s * len(settings.targets) + 30
    server = serve_http(settings, metrics, gate, stale_after_s)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info(
        "gate for %s: %s vs %s on %d targets, window %g s, every %g s; metrics on %s:%d",
        settings.model_name, settings.challenger_alias, settings.champion_alias, len(settings.targets),
        settings.window_s, settings.interval_s, settings.host, server.server_address[1],
    )  # fmt: skip
    with http:
        while not stop.is_set():
            try:
                gate.tick()
            except Exception:  # an MLflow or network failure: logged, tried again next round
                log.exception("round failed; trying again in %g s", settings.interval_s)
            stop.wait(settings.interval_s)
    server.shutdown()

"""The gate's own HTTP port: `/metrics` in the Prometheus text format, `/healthz` 200 while rounds keep ending and
503 once the last one is older than the limit."""

from __future__ import annotations

import time
from types import SimpleNamespace

import httpx

from rollout.cli import serve_http
from rollout.metrics import GateMetrics
from rollout.settings import load_settings


def test_metrics_and_health() -> None:
    settings = load_settings(model_name="tiny", tracking_uri="http://mlflow:5000", targets="http://a:8000",
                             host="127.0.0.1", port=0)  # fmt: skip
    metrics = GateMetrics()
    metrics.decisions.labels(decision="promoted").inc()
    gate = SimpleNamespace(last_round_at=time.time())
    server = serve_http(settings, metrics, gate, stale_after_s=60)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = httpx.get(f"{url}/metrics")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
        assert 'rollout_decisions_total{decision="promoted"} 1.0' in page.text
        assert httpx.get(f"{url}/healthz").status_code == 200
        gate.last_round_at = time.time() - 61
        stuck = httpx.get(f"{url}/healthz")
        assert stuck.status_code == 503 and stuck.text.startswith("stuck: last round 61 s ago")
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        server.shutdown()
        server.server_close()

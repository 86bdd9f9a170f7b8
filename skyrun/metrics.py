"""The launcher's Prometheus metrics: one registry per app (several apps can live in one process, as in the tests),
served by `serve_metrics` on a port of their own (settings.metrics_port), apart from the API: a NetworkPolicy can
admit Prometheus to that port alone, and scraping needs no token."""

from __future__ import annotations

import threading
import time
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# 5 ms (a probe) to 60 s (listing thousands of tasks on a slow API server).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "skyrun_requests",
            "HTTP requests by route template (`unmatched` for no route), method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "skyrun_request_duration_seconds",
            "Time from request to the end of the response, by route template; log streams are not in it (they last "
            "as long as the task: see skyrun_log_streams_open).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.log_streams = Gauge(
            "skyrun_log_streams_open", "Log streams being sent to clients now.", registry=self.registry
        )
        self.tasks_submitted = Counter(
            "skyrun_tasks_submitted", "Tasks accepted (their Job created).", registry=self.registry
        )
        self.submit_rejections = Counter(
            "skyrun_submit_rejections",
            "Submissions of authenticated users refused, by reason: malformed_request (422), invalid_task (YAML or "
            "spec), unknown_volume, over_quota, active_task_limit, cluster_refused, no_free_id.",
            ["reason"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "skyrun_auth_failures",
            "Requests refused by authentication or authorization, by reason: missing_token, invalid_token (401), "
            "all_users_denied (403).",
            ["reason"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...


class MetricsMiddleware:
    """Counts requests by route template, method and status when the response starts, and times them until their
    last byte, except the streaming routes: a followed log stream lasts as long as its task, which says nothing
    about the server's latency, so it is counted in the open-streams gauge instead."""

    def __init__(self, app: ASGIApp, metrics: Metrics, streaming_routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.streaming_routes = streaming_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in METHODS else "other"
        started = time.perf_counter()
        counted = streaming = False

        async def send_and_count(message: Message) -> None:
            nonlocal counted, streaming
            if message["type"] == "http.response.start" and not counted:
                counted = True
                route = route_of(scope)
                self.metrics.requests.labels(route=route, method=method, status=str(message["status"])).inc()
                if route in self.streaming_routes and message["status"] == 200:
                    streaming = True
                    self.metrics.log_streams.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            route = route_of(scope)
            if not counted:  # an exception escaped before any answer: the server's error middleware sends a 500
                self.metrics.requests.labels(route=route, method=method, status="500").inc()
            if streaming:
                self.metrics.log_streams.dec()
            elif route not in self.streaming_routes:
                self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


def route_of(scope: Scope) -> str:
    """The template of the route the router matched (`/tasks/{task_id}`), never the raw path: one series per route,
    whatever ids the clients send."""
    route = scope.get("route")
    return route.path if isinstance(route, BaseRoute) and hasattr(route, "path") else UNMATCHED


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve the text exposition of `registry` on host:port from a daemon thread (port 0: any free port)."""
    return start_http_server(port, addr=host, registry=registry)

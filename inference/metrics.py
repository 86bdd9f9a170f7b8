"""Prometheus metrics of one app, in their own registry (several apps can live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inference_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inference_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "inference_generated_tokens", "Completion tokens generated.", registry=self.registry
        )
        self.prompt_tokens = Counter(
            "inference_prompt_tokens", "Prompt tokens received in accepted requests.", registry=self.registry
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Sequences in each decoding step.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "inference_queue_depth", "Sequences waiting to join the running batch.", registry=self.registry
        )
        self.active_sequences = Gauge(
            "inference_active_sequences", "Sequences in the running batch.", registry=self.registry
        )
        self.rejected = Counter(
            "inference_rejected",
            "Requests refused before generation, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "inference_model_loaded",
            "1 for the model version now serving new requests.",
            ["model", "version"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "inference_model_swaps", "Model versions loaded after the first one.", registry=self.registry
        )
        self.model_load_failures = Counter(
            "inference_model_load_failures",
            "Failed attempts to resolve or load a model version.",
            registry=self.registry,
        )
        self.ready = Gauge("inference_ready", "1 while /readyz answers 200.", registry=self.registry)

    def set_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model=name, version=version).set(1)

"""Prometheus metrics of one app, in their own registry (several apps can live in one process, as in tests).

Requests, their latency and streams' time to first token are labelled with the `version` that served them and its
`alias` role (`champion` or `challenger`), so that a canary's two versions can be compared from Prometheus; both
labels are empty for requests no model served (probes, `/metrics`, requests refused before routing)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inference_requests",
            "HTTP requests by route, status code, and the model version and alias role that served them.",
            ["route", "status", "version", "alias"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inference_request_duration_seconds",
            "Time from request to the end of the response, by route, model version and alias role.",
            ["route", "version", "alias"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "inference_first_token_duration_seconds",
            "Time from a streamed completion's arrival to its first generated text sent (TTFT), by model version "
            "and alias role.",
            ["version", "alias"],
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
            "inference_queue_depth",
            "Sequences waiting to join a running batch, over every engine.",
            registry=self.registry,
        )
        self.active_sequences = Gauge(
            "inference_active_sequences", "Sequences in the running batches, over every engine.", registry=self.registry
        )
        self.rejected = Counter(
            "inference_rejected",
            "Requests refused before generation, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "inference_model_loaded",
            "1 for each model version now serving new requests, with its alias role (champion or challenger).",
            ["model", "version", "alias"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "inference_model_swaps",
            "Changes of the champion version after the first load (promotions of the challenger included).",
            registry=self.registry,
        )
        self.model_load_failures = Counter(
            "inference_model_load_failures",
            "Failed attempts to resolve or load a model version.",
            registry=self.registry,
        )
        self.model_polls = Counter(
            "inference_model_polls",
            "Checks of the model source for new versions, failed ones included.",
            registry=self.registry,
        )
        self.challenger_refusals = Counter(
            "inference_challenger_refusals",
            "Challenger versions refused (the champion serves alone), by reason: load_failed, tokenizer, shape.",
            ["reason"],
            registry=self.registry,
        )
        self.ready = Gauge("inference_ready", "1 while /readyz answers 200.", registry=self.registry)

    def set_models(self, name: str, versions: dict[str, str]) -> None:
        """`versions`: the version serving in each alias role."""
        self.model_info.clear()
        for alias, version in versions.items():
            self.model_info.labels(model=name, version=version, alias=alias).set(1)

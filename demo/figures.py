"""The demo's figures (matplotlib, Agg: files only): the loss curve of the MLflow run, alone and beside the burst's
latency per request and throughput (demo/observe.py)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from demo.observe import Burst, throughput


def draw_losses(ax: Any, tracking_uri: str, run_id: str) -> None:
    """Train and validation loss of the MLflow run, by step."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for metric, style in (("train_loss", "-"), ("val_loss", "o-")):
        history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
        if history:
            ax.plot([m.step for m in history], [m.value for m in history], style, label=metric)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def loss_curve(tracking_uri: str, run_id: str, title: str, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    draw_losses(ax, tracking_uri, run_id)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def metrics_figure(tracking_uri: str, run_id: str, title: str, result: Burst, out: Path) -> Path:
    """Loss curve | latency per request, with p50/p95/p99 from the server's histogram and from the client's own
    timings | requests/s and generated tokens/s over the burst."""
    plt = _pyplot()
    fig, (loss, latency, rate) = plt.subplots(1, 3, figsize=(16, 4.5), dpi=100)
    draw_losses(loss, tracking_uri, run_id)
    loss.set_title(title, fontsize=10)

    ok, failed = result.ok, [r for r in result.requests if r.status != 200]
    latency.plot([r.started_s for r in ok], [r.latency_s for r in ok], "o", ms=4, label="request (client)")
    if failed:
        latency.plot([r.started_s for r in failed], [r.latency_s for r in failed], "rx", label="failed")
    for source, found, color in (("server histogram", result.server_quantiles(), "gray"),
                                 ("client", result.client_quantiles(), "tab:green")):  # fmt: skip
        for (q, seconds), style in zip(found.items(), (":", "--", "-."), strict=True):
            if not math.isnan(seconds):
                label = f"p{round(q * 100)} {seconds:.3g}s ({source})"
                latency.axhline(seconds, ls=style, lw=1, color=color, label=label)
    latency.set(xlabel="sent at (s into the burst)", ylabel="latency (s)", ylim=(0, None))
    latency.set_title(f"{len(result.requests)} completions: latency per request", fontsize=10)
    latency.grid(alpha=0.3)
    latency.legend(fontsize=7, ncols=2, loc="lower center")

    windows = throughput(result.requests, max(0.02, result.duration_s / 16))
    edges = [0.0, *(w[0] for w in windows)]
    tokens = rate.twinx()
    tokens.stairs([w[2] for w in windows], edges, fill=True, alpha=0.3, color="tab:orange", label="tokens/s")
    tokens.set(ylabel="generated tokens/s", ylim=(0, None))
    rate.stairs([w[1] for w in windows], edges, lw=2, color="tab:blue", label="requests/s")
    rate.set(xlabel="completed at (s into the burst)", ylabel="requests/s", ylim=(0, None))
    rate.set_zorder(tokens.get_zorder() + 1)  # the requests/s line over the filled tokens/s
    rate.patch.set_visible(False)
    rate.set_title("throughput", fontsize=10)
    rate.grid(alpha=0.3)
    rate.legend(handles=[*rate.patches, *tokens.patches], fontsize=8, loc="lower center")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out

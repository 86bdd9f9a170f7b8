"""`python -m inference serve`: run the service under uvicorn with a graceful, Kubernetes-friendly shutdown."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from inference.app import create_app
from inference.settings import Settings

log = logging.getLogger(__name__)

# Exit code for a configuration error, as for the trainer: retrying cannot help.
EXIT_CONFIG = 2


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM: /readyz turns 503 while requests are still served for `drain_delay_s`, so load
    balancers stop sending new ones; then the listener closes, in-flight requests finish, the lifespan lets the
    engines drain, and the process exits 0. A second signal, or SIGINT, stops at once as plain uvicorn does."""

    def __init__(self, app: FastAPI, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.app = app
        self.settings = settings
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._draining:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self.app.state.draining = True
        log.info("SIGTERM: draining for %.1fs before closing the listener", self.settings.drain_delay_s)
        timer = threading.Timer(self.settings.drain_delay_s, self._stop_accepting)
        timer.daemon = True
        timer.start()

    def _stop_accepting(self) -> None:
        # uvicorn's main loop polls this flag; it then waits for open requests before running the lifespan end.
        self.should_exit = True


def serve(settings: Settings, log_level: str = "info") -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        lifespan="on",
    )
    DrainingServer(app, config, settings).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="serve OpenAI-compatible completions; every setting can also come from INFERENCE_* variables"
    )
    serve_parser.add_argument("--host", help="address to bind (INFERENCE_HOST)")
    serve_parser.add_argument("--port", type=int, help="port to listen on (INFERENCE_PORT)")
    serve_parser.add_argument("--model-uri", help="models:/<name>@<alias>, models:/<name>/<version> or a directory")
    serve_parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("model_uri", args.model_uri))
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"invalid inference settings:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(settings, args.log_level)
    return 0

"""The runner's HTTP endpoints on ``$POD_IP:<port>``.

GET  /healthz    liveness
GET  /progress   RunnerProgress (JSON)
GET  /metrics    Prometheus text
GET  /results    ResultsSummary (JSON)              bearer token
GET  /samples    SamplesReport as JSON Lines (``SamplesReport.jsonl``): the logged
                 samples, compact, once the results are ready (404 when the run logs
                 none)  bearer token
                 ``?wait=S``: answer once the results are ready (or the run failed), or
                 after S seconds (at most ``MAX_WAIT``): the operator asks a runner near
                 its end, to collect its results, and free its pod, at once
POST /ack        the operator has the results: exit  bearer token
"""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lmms_operator.api.runner import ResultsSummary, SamplesReport

from .progress import Tracker

PHASES = ("starting", "loading", "evaluating", "postprocessing", "uploading", "done", "failed")
#: Phases in which the run is over: a ``/results?wait=S`` request waits for nothing more.
OVER = ("done", "failed")
#: The longest a ``/results?wait=S`` request is held (S is capped to it).
MAX_WAIT = 10.0


def wait_seconds(path: str) -> float:
    """The ``wait`` query parameter of a request path: seconds in [0, MAX_WAIT], 0 when
    absent or not a number."""
    values = parse_qs(urlsplit(path).query).get("wait")
    try:
        wait = float(values[-1]) if values else 0.0
    except ValueError:
        return 0.0
    return 0.0 if math.isnan(wait) else min(MAX_WAIT, max(0.0, wait))


class RunnerServer:
    def __init__(self, host: str, port: int, tracker: Tracker, token: str | None) -> None:
        self.tracker = tracker
        self.token = token
        self._results: ResultsSummary | None = None
        #: Set before the results: the operator asks for them once it has the results.
        self.samples: SamplesReport | None = None
        self._ready = threading.Event()
        self.acknowledged = threading.Event()
        self.registry = CollectorRegistry()
        self._done = Gauge(
            "lmms_runner_samples_done", "Samples (model requests) answered.", registry=self.registry
        )
        self._total = Gauge(
            "lmms_runner_samples_expected",
            "Samples (model requests) to answer, once known.",
            registry=self.registry,
        )
        self._rate = Gauge(
            "lmms_runner_samples_per_second", "Current throughput.", registry=self.registry
        )
        self._phase = Gauge(
            "lmms_runner_phase",
            "1 for the runner's current phase.",
            ["phase"],
            registry=self.registry,
        )
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="runner-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def results(self) -> ResultsSummary | None:
        return self._results

    @results.setter
    def results(self, summary: ResultsSummary | None) -> None:
        self._results = summary
        if summary is not None:
            self._ready.set()  # answers the requests waiting for them

    def wait_for_results(self, seconds: float) -> ResultsSummary | None:
        """The results, waiting up to ``seconds`` for them while the run is not over (a
        failed run ends the wait: it has none)."""
        deadline = time.monotonic() + seconds
        while self._results is None and self.tracker.phase not in OVER:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._ready.wait(min(0.1, left))
        return self._results

    def _metrics(self) -> bytes:
        snap = self.tracker.snapshot()
        self._done.set(snap.done)
        self._total.set(snap.total)
        self._rate.set(snap.samples_per_second or 0)
        for phase in PHASES:
            self._phase.labels(phase).set(1 if phase == snap.phase else 0)
        return bytes(generate_latest(self.registry))

    def _authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True  # a workstation run without a token, on loopback
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), self.token.encode())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet access log
                return

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, code: int, obj: Any) -> None:
                self._send(code, json.dumps(obj).encode())

            def do_GET(self) -> None:
                routes: dict[str, Callable[[], None]] = {
                    "/healthz": lambda: self._send(200, b"ok\n", "text/plain"),
                    "/progress": lambda: self._send(
                        200, server.tracker.snapshot().model_dump_json(by_alias=True).encode()
                    ),
                    "/metrics": lambda: self._send(200, server._metrics(), CONTENT_TYPE_LATEST),
                    "/results": self._results,
                    "/samples": self._samples,
                }
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self._json(404, {"error": "not found"})
                else:
                    route()

            def _results(self) -> None:
                if not server._authorized(self.headers.get("Authorization")):
                    self._json(401, {"error": "a valid bearer token is required"})
                    return
                summary = server.wait_for_results(wait_seconds(self.path))
                if summary is None:
                    self._json(404, {"error": "no results yet", "phase": server.tracker.phase})
                else:
                    self._send(200, summary.model_dump_json(by_alias=True).encode())

            def _samples(self) -> None:
                if not server._authorized(self.headers.get("Authorization")):
                    self._json(401, {"error": "a valid bearer token is required"})
                elif server.samples is None:
                    self._json(404, {"error": "no logged samples", "phase": server.tracker.phase})
                else:
                    self._send(200, server.samples.jsonl().encode(), "application/jsonl")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(min(length, 65536))
                if self.path.split("?")[0] != "/ack":
                    self._json(404, {"error": "not found"})
                elif not server._authorized(self.headers.get("Authorization")):
                    self._json(401, {"error": "a valid bearer token is required"})
                elif server.results is None:
                    self._json(409, {"error": "no results to acknowledge yet"})
                else:
                    server.acknowledged.set()
                    self._json(200, {"acknowledged": True})

        return Handler

"""The worker's HTTP listener: `/livez`, `/readyz` (JSON bodies), `/metrics` (Prometheus
text format), and the status page (`/`, `/status.json`). Standard library server on its
own threads: it answers even while every sync thread is busy, and a slow probe never
blocks a scrape of another."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicomcast.ops.health import Health, Report
from dicomcast.ops.status_page import StatusPage

log = logging.getLogger(__name__)


IDLE_TIMEOUT = 30.0


class _Server(ThreadingHTTPServer):
    # A burst of scrapers and probes queues instead of being refused (the default is 5).
    request_queue_size = 128


class Listener:
    def __init__(
        self, health: Health, host: str, port: int, page: StatusPage | None = None
    ) -> None:
        self.health = health
        registry = health.metrics.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    health.ready()  # refreshes the dependency gauges (cached)
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/livez":
                    self._report(health.live())
                elif path == "/readyz":
                    self._report(health.ready())
                elif page is not None and path == "/":
                    self._send(200, page.html().encode(), "text/html; charset=utf-8")
                elif page is not None and path == "/status.json":
                    body = json.dumps(page.sample(), indent=1).encode() + b"\n"
                    self._send(200, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _report(self, report: Report) -> None:
                body = json.dumps(report.body, indent=1).encode() + b"\n"
                self._send(200 if report.ok else 503, body, "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            # An idle or trickling client is dropped after this many seconds, so idle
            # sockets cannot hold threads for ever.
            timeout = IDLE_TIMEOUT

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the real log lines

        self.server = _Server((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http-listener", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> Listener:
        self._thread.start()
        log.info(
            "listening for /livez /readyz /metrics",
            extra={"host": self.server.server_address[0], "port": self.port},
        )
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.health.stop()

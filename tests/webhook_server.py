"""A webhook receiver for tests: a local HTTP server that records each POST."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Hook(ThreadingHTTPServer):
    """Answers each POST with the next of ``statuses`` (the last one repeats), or hangs.

    Parameters:
      statuses(list[int]): HTTP statuses to answer, in turn.
      hang(threading.Event | None): if given, requests get no answer until it is set.
    """

    daemon_threads = True

    def __init__(self, statuses: list[int] | None = None, hang: threading.Event | None = None) -> None:
        self.statuses = statuses or [200]
        self.hang = hang
        self.requests: list[dict[str, Any]] = []
        self.answered = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with server.lock:
                    server.requests.append(
                        {"body": json.loads(body), "type": self.headers["Content-Type"], "at": time.monotonic()}
                    )
                    n = len(server.requests)
                if server.hang is not None:
                    server.hang.wait(120)
                    return
                self.send_response(server.statuses[min(n, len(server.statuses)) - 1])
                self.end_headers()
                self.wfile.write(b"ok")
                with server.lock:
                    server.answered += 1

            def log_message(self, *args: Any) -> None: ...

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/secret-token"

    def alerts(self) -> list[dict[str, Any]]:
        """The ``alert`` objects posted so far."""
        with self.lock:
            return [r["body"]["alert"] for r in self.requests]

    def close(self) -> None:
        if self.hang is not None:
            self.hang.set()
        self.shutdown()
        self.server_close()

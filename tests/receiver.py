"""A real HTTP receiver on loopback for webhook tests: answers as scripted, records what it got."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Answer:
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Receiver:
    """Answers each request with the next scripted `Answer` (the last one repeats)."""

    port: int
    script: list[Answer] = field(default_factory=lambda: [Answer()])
    received: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/lanes"

    def next_answer(self) -> Answer:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


@contextmanager
def serve(script: list[Answer] | None = None, port: int = 0) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (`port` 0: a free one), stopped when the block ends."""
    receiver = Receiver(port=port, script=script or [Answer()])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with lock:
                receiver.received.append(
                    Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                    )
                )
                answer = receiver.next_answer()
            if answer.delay_s:
                time.sleep(answer.delay_s)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "2")
            self.end_headers()
            with contextlib.suppress(OSError):  # the sender gave up (its timeout) before the answer
                self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()

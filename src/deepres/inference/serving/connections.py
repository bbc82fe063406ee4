"""The app on uvicorn (serve_on), with its connections bounded: at most --max-connections open (one more is
answered 503 and closed), and a request's headers must arrive within --header-timeout-s of the connection (or of the
answer before, on a kept-alive one), else 408 and the connection is closed. (The body's own deadline,
--body-timeout-s, is uploads.read_images'.) Without them, 1,100 half-sent requests were held open for 70 s and more.

A subclass of uvicorn's h11 protocol (uvicorn and h11 are pinned in pyproject.toml): uvicorn has neither a header
deadline nor a cap on connections (its limit_concurrency answers plain-text 503s and still keeps half-sent ones)."""
import importlib.util
import json
import socket
from http import HTTPStatus

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import Limits, option

REFUSED_LINGER_S = 1.0  # a refused connection reads (and drops) what the client sends for this long, then closes:
# closing at once would reset it, and a client whose request crossed the answer would lose the answer


def json_response(status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer in the documented shape, with Connection: close, as bytes for the socket."""
    body = json.dumps({"error": kind, "detail": detail}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def bounded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the --max-connections cap and the --header-timeout-s deadline of `limits`."""

    class BoundedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.header_timer = None
            self.refused = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                self.refuse()
            else:
                self.arm()

        def refuse(self) -> None:
            self.refused = True
            self.connections.discard(self)  # neither counted nor waited for at shutdown
            self.transport.write(json_response(
                503, "too_many_connections", f"the server has {option('max_connections')} "
                                             f"{limits.max_connections} connections open; retry in 1 s",
                {"Retry-After": "1"}))
            self.loop.call_later(REFUSED_LINGER_S, self.transport.close)

        def arm(self) -> None:
            """The deadline for the next request's headers, from now."""
            self.disarm()
            self.header_timer = self.loop.call_later(limits.header_timeout_s, self.headers_late)

        def disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def headers_late(self) -> None:
            self.header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0]:  # part of a request came: say why it ends
                self.transport.write(json_response(
                    408, "request_timeout", f"the request headers did not arrive within "
                                            f"{option('header_timeout_s')} {limits.header_timeout_s:g} s"))
            self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self.refused:
                return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are in: the body has its own deadline
                self.disarm()

        def eof_received(self) -> bool | None:
            if self.refused:
                self.transport.close()
            return super().eof_received()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.arm()

        def send_400_response(self, msg: str) -> None:  # what h11 cannot parse: the documented shape too
            self.transport.write(json_response(400, "bad_request", f"{msg.rstrip('.')}: the server speaks "
                                                                   f"HTTP/1.1"))
            self.transport.close()

        def connection_lost(self, exc) -> None:
            self.disarm()
            super().connection_lost(exc)

    return BoundedH11Protocol


class _Server(uvicorn.Server):
    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:
            # A second Ctrl-C: uvicorn skips the app's shutdown, and the app's lifespan, cancelled as the loop
            # closes, is then logged as a traceback. Ours only stops the batchers: no time to save by skipping it.
            await self.lifespan.shutdown()


def event_loop() -> str:
    """uvicorn's loop: uvloop where it is installed (a dependency on Linux and macOS), else asyncio's own. With
    uvloop the demo model served 731 against 545 requests/s at 32 clients (benchmarks/serve_load.py, 2 cores)."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def serve_on(app, sock: socket.socket, limits: Limits) -> None:
    """Serve `app` with uvicorn on the bound socket `sock` until SIGINT or SIGTERM: connections bounded by `limits`,
    requests in flight given --shutdown-timeout-s to finish (then the app answers them 503). uvicorn then raises the
    signal again, so the process ends the way it was asked to (SIGINT as KeyboardInterrupt)."""
    config = uvicorn.Config(app, log_level="warning", http=bounded_protocol(limits), loop=event_loop(),
                            timeout_graceful_shutdown=limits.shutdown_timeout_s)
    _Server(config).run(sockets=[sock])

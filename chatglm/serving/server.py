"""Running the app under uvicorn with the connection limits and the graceful drain of ServerSettings.

- A request's headers must arrive within ``request_timeout`` seconds of the connection opening (or of the
  first byte after an idle keep-alive); otherwise the connection gets a 408 and is closed. The body has its
  own ``request_timeout`` (RequestGuard). uvicorn alone waits for headers forever, so stalled clients would
  pile up until the process runs out of file descriptors.
- At most ``max_connections`` connections are served; a request on one more gets 503 and its connection is
  closed (uvicorn's ``limit_concurrency``). The open-file limit is raised to cover them where allowed, so
  that accept() does not fail (and log) for every connection past it.
- On SIGTERM or SIGINT the server stops accepting, the engine takes no more requests and the running ones go
  on for at most ``drain_seconds`` (then they end as "shutdown" and each client gets a well-formed end), and
  the process exits 0 once every response is complete. A second SIGINT quits at once.
"""

import logging
import resource

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

logger = logging.getLogger(__name__)

TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: 36\r\nconnection: close\r\n\r\nthe request headers came too slowly")
# file descriptors beyond the connections: the listening socket, the log, the model's files, threads' pipes
SPARE_FILES = 64
# after the drain time: for the cut answers' last events to be written
WRITE_GRACE_SECONDS = 5


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers."""

    header_timeout = 10.0  # set by serve()

    def connection_made(self, transport):
        super().connection_made(transport)
        self.header_timer = None
        self._expect_headers()

    def data_received(self, data):
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # part of the next request's headers, or none yet
            self._expect_headers()
        elif self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def connection_lost(self, exc):
        if self.header_timer is not None:
            self.header_timer.cancel()
        super().connection_lost(exc)

    def _expect_headers(self):
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self):
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server that lets the engine drain before connections are waited for, and exits normally
    (status 0) after a signal instead of raising it again."""

    def __init__(self, config: uvicorn.Config, engine, drain_seconds: float):
        super().__init__(config)
        self.engine, self.drain_seconds = engine, drain_seconds

    def handle_exit(self, sig, frame):
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets=None):
        logger.info("draining: no new requests; running answers end within %gs", self.drain_seconds)
        self.engine.drain(self.drain_seconds)
        await super().shutdown(sockets)


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft limit on open files towards ``needed`` (not past the hard limit); return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def serve(app, settings: ServerSettings, host: str, port: int):
    """Serve ``app`` (from create_app) until SIGTERM/SIGINT, then drain."""
    files = raise_open_file_limit(settings.max_connections + SPARE_FILES)
    connections = settings.max_connections
    if files != resource.RLIM_INFINITY and files < connections + SPARE_FILES:
        connections = max(1, files - SPARE_FILES)
        logger.warning("the open-file limit (%d) allows %d connections, not %d (--max-connections)",
                       files, connections, settings.max_connections)
    protocol = type("Protocol", (TimedH11Protocol,), {"header_timeout": settings.request_timeout})
    # the app logs one line per request itself, so uvicorn's access log is off
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False, http=protocol,
                            limit_concurrency=connections, timeout_keep_alive=settings.keep_alive_timeout,
                            timeout_graceful_shutdown=settings.drain_seconds + WRITE_GRACE_SECONDS)
    server = DrainingServer(config, app.state.serving.engine, settings.drain_seconds)
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)

"""The local server's HTTP/1.1 connections: uvicorn's h11 protocol, with a bound on request heads, and no access log.

h11 buffers a request's line and header fields until they are complete and refuses
them beyond ``h11_max_incomplete_event_size``; uvicorn then answers a bare 400 and
closes at once, while the client is still sending, so the client sees a connection
reset instead of the answer. Here a head over DICOM_MAX_HEADER_BYTES (one huge header
or many small ones: the bound is on their total) gets 431 (RFC 6585 section 5) with the
usual JSON error body, and the connection closes in stages as RFC 9112 section 9.6
advises: the write side first, then what the client still sends is read and dropped
for up to LINGER_SECONDS, so that the response reaches it.

In Azure the app does not see the connection: the Functions host and the App Service
front ends in front of it parse requests and enforce their own header limits before
a request reaches the app, so this protocol and DICOM_MAX_HEADER_BYTES apply to
``python -m dicom_core serve`` only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import h11
from starlette.applications import Starlette
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from dicom_core.errors import RequestHeaderFieldsTooLarge
from dicom_core.http.app import create_app
from dicom_core.http.errors import error_response
from dicom_core.local.lifetime import configure_logging, stop_with_parent
from dicom_core.settings import Limits, Settings

LINGER_SECONDS = 2
"""How long a refused connection keeps reading (and dropping) what the client still sends."""


class _Connection(h11.Connection):
    """h11's server connection, remembering the status h11 suggests for a request it refuses."""

    refused_status: int | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as error:
            self.refused_status = error.error_status_hint
            raise


class BoundedHeadProtocol(H11Protocol):
    """uvicorn's H11Protocol, answering 431 to a request head over ``config.h11_max_incomplete_event_size``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.conn = _Connection(h11.SERVER, config.h11_max_incomplete_event_size)
        self._refused = False

    def data_received(self, data: bytes) -> None:
        # h11 measures its buffer only while an event is incomplete, so a head over the bound
        # arriving in one read would pass: give it at most the bound at a time.
        step = self.config.h11_max_incomplete_event_size
        for start in range(0, len(data), step):
            if self._refused or self.transport.is_closing():
                return  # after a refusal, what the client still sends is dropped
            super().data_received(data[start : start + step])

    def send_400_response(self, msg: str) -> None:
        if self.conn.refused_status != RequestHeaderFieldsTooLarge.status:
            super().send_400_response(msg)
            return
        error = RequestHeaderFieldsTooLarge(
            f"the request line and header fields are over {self.config.h11_max_incomplete_event_size} bytes "
            "(setting DICOM_MAX_HEADER_BYTES)"
        )
        response = error_response(error.status, error.message)
        headers = [*response.raw_headers, (b"connection", b"close")]
        for event in (h11.Response(status_code=error.status, headers=headers), h11.Data(data=response.body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self._refused = True
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def uvicorn_options(limits: Limits) -> dict[str, Any]:
    """The keyword arguments of uvicorn.run that bound request heads by ``limits`` and keep query values out of the log.

    uvicorn's access log writes each request line with its query string, and a search's values
    are patient names and IDs. The audit event (http/audit.py) is the log's one line per
    request instead: it names the query keys and never their values (docs/security.md).
    """
    return {"http": BoundedHeadProtocol, "h11_max_incomplete_event_size": limits.max_header_bytes, "access_log": False}


def worker_app(settings: Settings, serve_pid: int) -> Starlette:
    """The app of one worker process of ``serve --workers``, built in that process.

    uvicorn spawns its workers, so ``settings`` reach them pickled with the server's
    configuration, never through the environment, and logging is set up again here. A
    worker is killed when serve (process ``serve_pid``) dies, SIGKILL included, instead of
    keeping the port: not stopped gracefully, since a graceful stop can wait on storage that
    went away with serve's emulator. A worker that starts after serve died exits at once.
    """
    if sys.platform == "linux":
        stop_with_parent(signal.SIGKILL)
    if os.getppid() != serve_pid:
        raise SystemExit("serve stopped before this worker started")
    configure_logging()
    return create_app(settings)

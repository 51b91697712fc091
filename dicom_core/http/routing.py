"""The shape of a route-table entry, shared by the local server and function_app.py.

Every route's endpoint is the same layering, outermost first: audit (one event per
request), error handling (every failure becomes a status and a message), identity
and role checks, then the feature's handler.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.errors import RequestTimeout, UriTooLong
from dicom_core.http.audit import audit_event, emit
from dicom_core.http.auth import Access, authenticate, authorize
from dicom_core.http.context import services_for
from dicom_core.http.cors import add_cors_headers, preflight
from dicom_core.http.errors import Handler, with_error_handling

API_PREFIX = "/v2"
PARTITION_PREFIX = "/partitions/{partition}"


@dataclass(frozen=True)
class Route:
    """One DICOMweb resource: ``path`` is relative to /v2 and exists under a partition too.

    ``access`` defaults from the methods: GET reads, POST/PUT write, DELETE deletes.
    """

    name: str
    path: str
    methods: tuple[str, ...]
    handler: Handler
    partitioned: bool = True
    access: Access | None = None

    @property
    def required_access(self) -> Access:
        return self.access or Access.for_methods(self.methods)

    def expand(self) -> list[ExpandedRoute]:
        """The /v2 form and, when partitioned, the /v2/partitions/{partition} form."""
        endpoint = _endpoint(self.name, self.handler, self.required_access, self.methods)
        methods = (*self.methods, "OPTIONS")  # CORS preflight
        forms = [ExpandedRoute(self.name, f"{API_PREFIX}{self.path}", methods, endpoint, self.required_access)]
        if self.partitioned:
            forms.append(
                ExpandedRoute(
                    f"{self.name}_in_partition",
                    f"{API_PREFIX}{PARTITION_PREFIX}{self.path}",
                    methods,
                    endpoint,
                    self.required_access,
                )
            )
        return forms


@dataclass(frozen=True)
class ExpandedRoute:
    name: str  # unique; the Azure Function's name, which Application Insights shows
    path: str  # Starlette path syntax, e.g. /v2/studies/{study}
    methods: tuple[str, ...]
    endpoint: Handler
    access: Access


def _endpoint(name: str, handler: Handler, access: Access, methods: tuple[str, ...]) -> Handler:
    async def checked(request: Request) -> Response:
        settings = (await services_for(request)).settings
        limits = settings.limits
        if len(request.url.query) > limits.max_query_bytes:
            raise UriTooLong(
                f"the query string has {len(request.url.query)} characters, more than {limits.max_query_bytes} "
                "(setting DICOM_MAX_QUERY_BYTES)"
            )
        if access is not Access.PUBLIC:
            principal = authenticate(request.headers, settings.security)
            request.state.principal = principal
            authorize(principal, access, settings.security)
        try:
            async with asyncio.timeout(limits.request_timeout_seconds):
                return await handler(request)
        except TimeoutError:
            raise RequestTimeout(
                f"the request did not complete within {limits.request_timeout_seconds} s "
                "(setting DICOM_REQUEST_TIMEOUT_SECONDS); nothing of an unfinished instance was stored"
            ) from None

    handled = with_error_handling(checked)

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        origins = await _cors_origins(request)
        if request.method == "OPTIONS":
            return preflight(request, origins, methods)
        response = await handled(request)
        add_cors_headers(request, response, origins)
        if access is not Access.PUBLIC:
            principal = getattr(request.state, "principal", None)
            who = principal.audit_name if principal is not None else "unauthenticated"
            emit(audit_event(request, name, who, response.status_code, started))
        return response

    return endpoint


async def _cors_origins(request: Request) -> tuple[str, ...]:
    if "origin" not in request.headers:
        return ()
    try:
        return (await services_for(request)).settings.cors_origins
    except Exception:  # storage down: CORS headers are not worth a failure of their own
        return ()

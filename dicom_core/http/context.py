"""What every handler needs from a request: the services, the partition, the base URL.

Handlers run both under the local Starlette app and as Azure Functions. Each host opens
the services from the settings it was given and puts them in the request's state
(``provide_services``) before a handler runs: the local app in an ASGI middleware
(http/app.py), function_app.py in its binding of each route.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from starlette.requests import Request

from dicom_core.dicom.uids import partition_problem, uid_problem
from dicom_core.errors import BadRequest, PayloadTooLarge
from dicom_core.services import Services
from dicom_core.settings import DEFAULT_PARTITION
from dicom_core.storage.layout import Scope

_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
_SERVICES = "services"


def provide_services(scope: MutableMapping[str, Any], services: Services) -> None:
    """Make ``services`` the ones the handlers of this request (an ASGI scope) use."""
    scope.setdefault("state", {})[_SERVICES] = services


async def services_for(request: Request) -> Services:
    """The services the host provided for this request."""
    services = request.scope.get("state", {}).get(_SERVICES)
    if services is None:
        raise RuntimeError("no services for this request: the host must call provide_services before a handler runs")
    return services


def partition_of(request: Request) -> str:
    """The partition named in the URL, or Microsoft.Default."""
    partition = request.path_params.get("partition")
    if partition is None:
        return DEFAULT_PARTITION
    problem = partition_problem(partition)
    if problem:
        raise BadRequest(f"partition name {partition[:80]!r} is invalid: {problem}")
    return partition


def uid_param(request: Request, name: str, label: str) -> str:
    """A UID from the URL path, validated before it goes near a lake path or a table key."""
    value = request.path_params[name]
    problem = uid_problem(value)
    if problem:
        raise BadRequest(f"{label} {value[:80]!r} in the URL is not a valid UID: {problem}")
    return value


def scope_of(request: Request) -> Scope:
    """The study, series or instance the URL names, each UID validated."""
    params = request.path_params
    return Scope(
        partition_of(request),
        uid_param(request, "study", "StudyInstanceUID"),
        uid_param(request, "series", "SeriesInstanceUID") if "series" in params else None,
        uid_param(request, "instance", "SOPInstanceUID") if "instance" in params else None,
    )


def root_url(request: Request) -> str:
    """The URL prefix of the service's own resources (operations, tags), as the client sees it: …/v2."""
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or request.url.netloc
    server = request.scope.get("server")
    if host in _LOOPBACK_NAMES and server and server[1] not in (80, 443):
        # dicomweb-client sends "Host: 127.0.0.1" without the port; locally the socket knows it.
        host = f"{host}:{server[1]}"
    return f"{scheme}://{host}/v2"


def base_url(request: Request) -> str:
    """The URL prefix of this partition's resources, as the client sees it (…/v2 or …/v2/partitions/P)."""
    prefix = root_url(request)
    if "partition" in request.path_params:
        prefix += f"/partitions/{partition_of(request)}"
    return prefix


async def body_at_most(request: Request, limit: int, too_large: str) -> bytes:
    """The whole request body, read as it streams in; 413 with ``too_large`` once it passes ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)

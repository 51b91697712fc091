"""Cross-origin requests from browser viewers such as OHIF (Fetch standard, CORS protocol).

Implemented here rather than as app middleware so the same code runs under the
local server and in Azure Functions, where each route is a separate function.
The headers viewers need to read are exposed (Content-Type of each multipart
part is in the body; the response's Content-Type, Warning, Location, ETag are
headers).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from dicom_core.http.errors import error_response

ALLOWED_HEADERS = "authorization, content-type, accept, if-none-match, range"
EXPOSED_HEADERS = "content-type, content-length, content-location, location, warning, etag, content-range"
MAX_AGE_SECONDS = "600"


def allowed_origin(request: Request, origins: tuple[str, ...]) -> str | None:
    """The value of Access-Control-Allow-Origin for this request, or None."""
    origin = request.headers.get("origin")
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin.rstrip("/") in origins else None


def preflight(request: Request, origins: tuple[str, ...], methods: tuple[str, ...]) -> Response:
    """The answer to an OPTIONS preflight: 204 with the permissions, or 403 for an origin not allowed."""
    origin = allowed_origin(request, origins)
    if origin is None:
        return error_response(403, "this origin is not allowed (setting DICOM_CORS_ORIGINS)")
    return Response(
        status_code=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": MAX_AGE_SECONDS,
            "Vary": "Origin",
        },
    )


def add_cors_headers(request: Request, response: Response, origins: tuple[str, ...]) -> None:
    origin = allowed_origin(request, origins)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers["Vary"] = "Origin"

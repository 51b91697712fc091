"""Turn failures into responses with a short message; never a stack trace to the client."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable

from azure.core.exceptions import AzureError, HttpResponseError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicom_core.errors import DicomServiceError
from dicom_core.storage.lake import describe_storage_error

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, message: str) -> JSONResponse:
    """The body every 4xx/5xx carries: the status and a message saying what was wrong."""
    return JSONResponse({"status": status, "message": message}, status_code=status)


def with_error_handling(handler: Handler) -> Handler:
    """Wrap a route handler so that every failure becomes a precise status and message."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except DicomServiceError as error:
            response = error_response(error.status, error.message)
            response.headers.update(error.headers)  # e.g. the Warning of a refused UPS-RS request (PS3.18 11.7.3.2)
            return response
        except HttpResponseError as error:
            logger.warning("storage refused a request: %s", describe_storage_error(error))
            return error_response(503, f"storage failure: {describe_storage_error(error)}; try again later")
        except AzureError as error:
            logger.warning("storage unreachable: %s", type(error).__name__)
            return error_response(503, f"the storage service could not be reached ({type(error).__name__}); try again later")
        except Exception:
            incident = uuid.uuid4().hex[:12]
            logger.exception("unexpected failure, incident %s", incident)
            return error_response(500, f"internal error (incident {incident}); the request was not completed")

    return wrapped

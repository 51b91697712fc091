"""Turn failures into responses with a short message; never a stack trace to the client."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping

from azure.core.exceptions import AzureError, HttpResponseError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from dicom_core.errors import DicomServiceError
from dicom_core.storage.errors import StorageContention, describe_storage_error

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

CLIENT_CLOSED_REQUEST = 499
"""The status the audit event records for a request whose client closed the connection before
sending all of it. Not an HTTP status (RFC 9110 has none for it): nginx's "client closed request",
so that it reads as the client's doing, not a failure of the service. No client ever receives it."""


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The body every 4xx/5xx carries: the status and a message saying what was wrong (docs/errors.md)."""
    return JSONResponse({"status": status, "message": message}, status_code=status, headers=dict(headers or {}))


def with_error_handling(handler: Handler) -> Handler:
    """Wrap a route handler so that every failure becomes a precise status and message."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except DicomServiceError as error:
            return error_response(error.status, error.message, error.headers)
        except StorageContention as error:
            logger.warning("storage contention: %s", error)
            return error_response(503, f"{error}; try again")
        except ClientDisconnect:
            # Starlette raises it from request.stream() when the connection closes mid-body. Whatever
            # of the unfinished instance had arrived was discarded as the exception went through the
            # body reader and the store; nothing is wrong on this side, so no incident and no traceback.
            logger.info("the client closed the connection before sending the whole request body")
            return error_response(CLIENT_CLOSED_REQUEST, "the client closed the connection before sending the whole request")
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

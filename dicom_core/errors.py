"""Errors that operations raise and the HTTP layer turns into responses (docs/errors.md).

Each error carries the HTTP status it maps to, a message written for the client
(what was wrong and, where it applies, what to do) and the response headers the
status needs. Operations never import the web framework; this module is the whole
contract between them.
"""

from __future__ import annotations

from collections.abc import Mapping


class DicomServiceError(Exception):
    """Base class: ``status`` is the HTTP status, ``message`` the client-facing text, ``headers`` extra response headers."""

    status = 500

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(DicomServiceError):
    status = 400


class NotFound(DicomServiceError):
    status = 404


class NotAcceptable(DicomServiceError):
    status = 406


class Conflict(DicomServiceError):
    status = 409


class PayloadTooLarge(DicomServiceError):
    status = 413


class RangeNotSatisfiable(DicomServiceError):
    """A byte range outside the value (RFC 9110 15.5.17); carries ``Content-Range: bytes */{size}``."""

    status = 416


class UnsupportedMediaType(DicomServiceError):
    status = 415


class StorageUnavailable(DicomServiceError):
    """The lake or the index could not be reached or refused the request."""

    status = 503


class Unauthorized(DicomServiceError):
    """No identity, or one that cannot be trusted."""

    status = 401


class Forbidden(DicomServiceError):
    """An identity without the role the operation needs."""

    status = 403


class RequestTimeout(DicomServiceError):
    status = 408


class UriTooLong(DicomServiceError):
    status = 414


class RequestHeaderFieldsTooLarge(DicomServiceError):
    """RFC 6585 section 5: the request line and header fields are larger than the server accepts."""

    status = 431

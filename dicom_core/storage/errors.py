"""Storage failures, described once: the exceptions adapters raise and the sentences clients read.

Adapters raise the Azure SDK's exceptions for what storage answered, plus the two below
for what the adapters themselves conclude. The HTTP layer turns all of them into a 503
that says what failed (docs/errors.md); nothing here knows HTTP.
"""

from __future__ import annotations

from azure.core.exceptions import AzureError, HttpResponseError


class StorageContention(Exception):
    """Optimistic concurrency gave up: other writers kept changing the same entity.

    Retrying the request later succeeds; nothing was half-written (every attempt is
    conditional on the ETag it read).
    """


def describe_storage_error(error: HttpResponseError) -> str:
    """A client-facing sentence for a storage failure (no internals, no keys)."""
    code = getattr(error, "error_code", None) or ""
    status = getattr(error, "status_code", None)
    if status == 403:
        return (
            "the storage account refused access (403"
            + (f" {code}" if code else "")
            + "): the app's identity needs Storage Blob Data Contributor on the lake and Storage Table Data "
            "Contributor on the index"
        )
    return f"the storage service answered {status or 'an error'}" + (f" ({code})" if code else "")


def describe_failure(doing: str, error: Exception) -> str:
    """``{doing} failed: why``, for any storage failure (refused, unreachable, contended)."""
    if isinstance(error, HttpResponseError):
        return f"{doing} failed: {describe_storage_error(error)}"
    if isinstance(error, StorageContention):
        return f"{doing} failed: {error}; try again"
    return f"{doing} failed: the storage service could not be reached ({type(error).__name__})"


STORAGE_FAILURES: tuple[type[Exception], ...] = (AzureError, StorageContention)
"""What a storage call can raise besides a bug: catch these, never ``Exception``."""

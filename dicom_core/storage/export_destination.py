"""The destination of an export: a blob container of the customer's, named by its URL (docs/export.md).

Files arrive by server-side copy (Copy Blob from a SAS URL of the source file), so their
bytes never pass through the service. The container is reached with the SAS in its URL,
or with the service's managed identity. errors.log is an append blob: each append is
atomic and adds to what is there, so a step's lines survive a crash of the next step,
and no step reads the log back to rewrite it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient

from dicom_core.settings import Connection
from dicom_core.storage import connections
from dicom_core.storage.lake import CopyFailed, copy_from_url
from dicom_core.storage.tables import RequestStatistics, lake_hooks

# The error codes of a destination that refuses the service (as opposed to one file failing).
_REFUSALS = {
    "AuthenticationFailed": "the destination did not accept the credentials (an expired or malformed SAS?)",
    "AuthorizationFailure": "the destination refused the request (a SAS of another container, or a network rule?)",
    "AuthorizationPermissionMismatch": "the credentials may not write there (the SAS needs create and write permissions; "
    "the managed identity needs Storage Blob Data Contributor on the container)",
    "AuthorizationResourceTypeMismatch": "the SAS does not allow writing blobs",
    "ContainerNotFound": "the container does not exist",
    "ContainerBeingDeleted": "the container is being deleted",
}


class DestinationRefused(Exception):
    """The destination cannot be written; the message says why (and holds no secret)."""


def without_query(url: str) -> str:
    """``url`` without its query string: what may be shown of a SAS URL."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _refusal(error: HttpResponseError) -> DestinationRefused | None:
    code = str(error.error_code or "")
    if code in _REFUSALS:
        return DestinationRefused(f"{_REFUSALS[code]} ({error.status_code} {code})")
    if error.status_code == 403:
        return DestinationRefused(f"the destination refused a write (403 {code or 'Forbidden'})")
    return None


class ExportDestination:
    """Blobs under one container URL; every request is counted with the lake's."""

    def __init__(self, container_url: str, use_identity: bool, lake: Connection, statistics: RequestStatistics) -> None:
        options = lake_hooks(statistics)
        if use_identity:
            self._container = ContainerClient.from_container_url(
                without_query(container_url), credential=connections.credential(lake), **options
            )
        else:
            self._container = ContainerClient.from_container_url(container_url, **options)
        self.url = without_query(container_url)

    async def close(self) -> None:
        await self._container.close()

    def url_of(self, name: str) -> str:
        """The URL of blob ``name``, without any SAS."""
        return f"{self.url.rstrip('/')}/{name}"

    async def start_log(self, name: str) -> None:
        """Create the empty append blob ``name``; the first write, so a destination that refuses writes is known at once."""
        try:
            await self._container.get_blob_client(name).create_append_blob()
        except HttpResponseError as error:
            raise _refusal(error) or DestinationRefused(f"the destination failed ({error.status_code})") from None

    async def append(self, name: str, data: bytes) -> None:
        try:
            await self._container.get_blob_client(name).append_block(data)
        except HttpResponseError as error:
            raise _refusal(error) or DestinationRefused(f"errors.log could not be written ({error.status_code})") from None

    async def sizes(self, prefix: str) -> dict[str, int]:
        """The size of every blob under ``prefix``: what a resumed export need not copy again."""
        try:
            return {blob.name: blob.size async for blob in self._container.list_blobs(name_starts_with=prefix)}
        except HttpResponseError as error:
            refusal = _refusal(error)
            if refusal is None:
                raise
            return {}  # a SAS without list permission: copy again rather than fail (the copy overwrites)

    async def copy(self, name: str, source_url: str) -> None:
        """Copy the file at ``source_url`` (readable by its SAS) to blob ``name``, server-side; done when it returns."""
        try:
            status = await copy_from_url(self._container.get_blob_client(name), source_url)
        except ResourceNotFoundError as error:
            raise _refusal(error) or CopyFailed(f"the source file is missing ({error.error_code})") from None
        except HttpResponseError as error:
            raise _refusal(error) or CopyFailed(f"the copy failed ({error.status_code} {error.error_code})") from None
        if status != "success":
            raise CopyFailed(f"the copy ended {status}")

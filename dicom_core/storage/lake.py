"""The lake adapter: instance files in one file system of the customer's storage account.

Writes are atomic: an instance is either absent or whole. On the blob endpoint a
single Put Blob, or a block list committed at the end, is atomic; on a
hierarchical-namespace (ADLS Gen2) account the file is written under a staging
folder outside the contract layout, then renamed into place, which is atomic.
Which one applies is detected from the account, not configured (Azurite, the local
emulator, has no dfs endpoint). Reads, ranged reads, listing and deletes use the
blob endpoint, which serves both kinds of account (docs/lake-layout.md).

The requests an instance costs most often, Get Blob and a small file's Put Blob, are
written here and sent through the SDK client's own pipeline (signing, retries, request
counting), without the SDK's per-call client objects and download machinery, which cost
more CPU than the request itself (docs/benchmark.md). A read cut off mid-body resumes from
the byte it reached, on the same version of the file.

ETags are compared between what a write returned, what a listing shows and what the
index recorded, and the SDK returns them quoted from some calls and bare from others,
so every ETag leaves this adapter in one form: quoted, as HTTP sends it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import BinaryIO
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceResponseError,
)
from azure.core.rest import AsyncHttpResponse, HttpRequest
from azure.storage.blob import BlobBlock, BlobSasPermissions, ContentSettings, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobServiceClient
from azure.storage.filedatalake.aio import DataLakeServiceClient

from dicom_core.storage.connections import TRANSFER_BLOCK_BYTES

STAGING_FOLDER = "staging"  # at the file-system root, outside AHDS/: never part of the contract
_CONTENT_TYPE = "application/dicom"
_UPLOAD_CONCURRENCY = 2
_COPY_SAS_LIFETIME = timedelta(hours=1)  # a server-side copy reads its source within seconds
_COPY_POLL_SECONDS = 0.5
_COPY_POLLS = 600  # five minutes for one file: a cross-account copy Azure finishes asynchronously
_SPLICE_BLOCK = 256 * 1024 * 1024  # bytes one Put Block From URL stages (the service allows 4000 MiB)
_READ_RESUMES = 3  # times one read continues after its connection broke mid-body
_METADATA_HEADER = "x-ms-meta-"


def _block_id(number: int) -> str:
    """Block IDs of one blob have one length (Put Block List)."""
    return base64.b64encode(f"{number:08d}".encode()).decode()


class InstanceExists(Exception):
    """A create-only write found a file already at the path."""


class FileMissing(Exception):
    """No file at the path."""


class CopyFailed(Exception):
    """A server-side copy of one file did not complete; the message says why."""


async def copy_from_url(blob: BlobClient, source_url: str) -> str:
    """Copy Blob from ``source_url`` (readable by its SAS) to ``blob``; its final status, ``success`` when done.

    Mostly done when the call returns; otherwise the copy's status is polled, for at most
    _COPY_POLLS times _COPY_POLL_SECONDS (a copy still pending then ends ``pending``).
    """
    copy = await blob.start_copy_from_url(source_url)
    status = copy.get("copy_status")
    for _ in range(_COPY_POLLS):
        if status != "pending":
            break
        await asyncio.sleep(_COPY_POLL_SECONDS)
        status = (await blob.get_blob_properties()).copy.status
    return status


class FileChanged(Exception):
    """A write conditional on the file's ETag found another version there, or none."""


@dataclass(frozen=True)
class LakeFile:
    """A file in the lake as written, listed or looked at: its ETag is the version the index records."""

    path: str
    size: int
    etag: str
    last_modified: datetime | None


@dataclass(frozen=True)
class OpenRead:
    """A read of a file that the lake answered: the version it is reading, and its bytes, read from ``chunks``.

    A read whose chunks are not wanted after all is ``close``d, which frees its connection.
    """

    etag: str
    chunks: AsyncIterator[bytes]
    _response: AsyncHttpResponse

    async def close(self) -> None:
        await self._response.close()


def normalized_etag(etag: str) -> str:
    """The ETag in quotes, whichever form the SDK call returned."""
    return f'"{etag.strip(chr(34))}"'


def _storage_error(response: AsyncHttpResponse) -> HttpResponseError:
    """The SDK's error for a refused request, with the service's error code (``x-ms-error-code``)."""
    error = HttpResponseError(response=response)
    error.error_code = response.headers.get("x-ms-error-code")
    return error


def _range_header(offset: int, length: int | None) -> dict[str, str]:
    if length is not None:
        return {"x-ms-range": f"bytes={offset}-{offset + length - 1}"}
    return {"x-ms-range": f"bytes={offset}-"} if offset else {}


class Lake:
    """Instance files at contract paths in file system ``file_system``."""

    def __init__(self, blobs: BlobServiceClient, datalake: DataLakeServiceClient | None, file_system: str) -> None:
        self._blobs = blobs
        self._datalake = datalake
        self._container = blobs.get_container_client(file_system)
        self.file_system = file_system
        self._hierarchical: bool | None = None

    async def close(self) -> None:
        await self._blobs.close()
        if self._datalake is not None:
            await self._datalake.close()

    async def prepare(self) -> None:
        """Create the file system when missing and learn whether the account is hierarchical."""
        with contextlib.suppress(ResourceExistsError):
            await self._container.create_container()
        info = await self._blobs.get_account_information()
        self._hierarchical = bool(info.get("is_hns_enabled")) and self._datalake is not None

    @property
    def account_name(self) -> str:
        return self._blobs.account_name or "(unknown)"

    @property
    def hierarchical(self) -> bool:
        return bool(self._hierarchical)

    async def write(self, path: str, data: BinaryIO, size: int, *, overwrite: bool) -> LakeFile:
        """Write ``size`` bytes from ``data`` at ``path`` atomically.

        With ``overwrite`` False the write fails with InstanceExists when a file is
        already there, and that file is left untouched.
        """
        if self._hierarchical is None:
            await self.prepare()
        if self._hierarchical:
            return await self._write_by_rename(path, data, size, overwrite=overwrite)
        if size <= TRANSFER_BLOCK_BYTES:
            return await self._put(path, data.read(size), overwrite=overwrite)
        blob = self._container.get_blob_client(path)
        try:
            result = await blob.upload_blob(
                data,
                length=size,
                overwrite=overwrite,
                max_concurrency=_UPLOAD_CONCURRENCY,
                content_settings=ContentSettings(content_type=_CONTENT_TYPE),
            )
        except ResourceExistsError:
            raise InstanceExists(path) from None
        return LakeFile(path, size, normalized_etag(result["etag"]), result.get("last_modified"))

    async def _put(self, path: str, content: bytes, *, overwrite: bool) -> LakeFile:
        """One Put Blob of ``content``, as the SDK's ``upload_blob`` sends it for a file of one block."""
        # Content-Type is signed (Shared Key), so it is set here rather than left to the HTTP client.
        headers = {
            "x-ms-blob-type": "BlockBlob",
            "x-ms-blob-content-type": _CONTENT_TYPE,
            "Content-Type": "application/octet-stream",
        }
        if not overwrite:
            headers["If-None-Match"] = "*"
        response = await self._send("PUT", path, headers, content)
        if response.status_code == 409 and response.headers.get("x-ms-error-code") == "BlobAlreadyExists":
            raise InstanceExists(path)
        if response.status_code != 201:
            raise _storage_error(response)
        return LakeFile(path, len(content), normalized_etag(response.headers["ETag"]), _last_modified(response))

    async def _send(
        self, method: str, path: str, headers: dict[str, str], content: bytes | None = None, *, stream: bool = False
    ) -> AsyncHttpResponse:
        """One blob request through the container client's pipeline; a streamed answer is read unless it succeeded."""
        request = HttpRequest(
            method,
            f"{self._container.url}/{quote(path)}",
            headers={"x-ms-version": self._container.api_version, **headers},
            content=content,
        )
        # The SDK has no public call that sends a request of ours through a client's pipeline; this
        # one is its generated client's, as in azure-storage-blob pinned in requirements.txt.
        response = await self._container._client._client.send_request(request, stream=stream)
        if stream and not 200 <= response.status_code < 300:
            await response.read()  # an error's body, for its message
        return response

    async def _write_by_rename(self, path: str, data: BinaryIO, size: int, *, overwrite: bool) -> LakeFile:
        file_system = self._datalake.get_file_system_client(self.file_system)
        staging = file_system.get_file_client(f"{STAGING_FOLDER}/{uuid.uuid4().hex}.dcm")
        await staging.upload_data(data, length=size, overwrite=True, max_concurrency=_UPLOAD_CONCURRENCY)
        conditions = {} if overwrite else {"etag": "*", "match_condition": MatchConditions.IfMissing}
        try:
            renamed = await staging.rename_file(f"{self.file_system}/{path}", **conditions)
        except (ResourceExistsError, ResourceModifiedError):
            await staging.delete_file()
            raise InstanceExists(path) from None
        properties = await renamed.get_file_properties()
        return LakeFile(path, size, normalized_etag(properties.etag), properties.last_modified)

    async def properties(self, path: str) -> LakeFile:
        try:
            props = await self._container.get_blob_client(path).get_blob_properties()
        except ResourceNotFoundError:
            raise FileMissing(path) from None
        return LakeFile(path, props.size, normalized_etag(props.etag), props.last_modified)

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The bytes at ``path`` (a range of them when ``offset``/``length`` are given)."""
        return b"".join([chunk async for chunk in self.stream(path, offset, length)])

    async def stream(
        self, path: str, offset: int = 0, length: int | None = None, *, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes at ``path`` in chunks; with ``etag``, only if the file still has it (``open``, then its chunks)."""
        opened = await self.open(path, offset, length, etag=etag)
        async for chunk in opened.chunks:
            yield chunk

    async def open(self, path: str, offset: int = 0, length: int | None = None, *, etag: str | None = None) -> OpenRead:
        """One Get Blob of the bytes at ``path``, answered but its body not read yet; with ``etag``, only if the file has it.

        Raises FileMissing, ResourceModifiedError (another ETag) or HttpResponseError at once.
        When the connection breaks mid-body, a ranged read of the same version (If-Match on the
        ETag it answered with) continues from the byte reached.
        """
        response = await self._get(path, offset, length, etag)
        version = etag or normalized_etag(response.headers["ETag"])
        return OpenRead(version, self._chunks(response, path, offset, length, version), response)

    async def _chunks(
        self, response: AsyncHttpResponse, path: str, offset: int, length: int | None, etag: str
    ) -> AsyncIterator[bytes]:
        end = None if length is None else offset + length
        for resume in range(_READ_RESUMES + 1):
            try:
                async for chunk in response.iter_bytes():
                    offset += len(chunk)
                    yield chunk
                return
            except (IncompleteReadError, ServiceResponseError):
                if offset == end:
                    return
                if resume == _READ_RESUMES:
                    raise
            finally:
                await response.close()  # also when the reader stops early: a half-read connection is not reused
            response = await self._get(path, offset, None if end is None else end - offset, etag)

    async def _get(self, path: str, offset: int, length: int | None, etag: str | None) -> AsyncHttpResponse:
        headers = _range_header(offset, length) | ({"If-Match": etag} if etag else {})
        response = await self._send("GET", path, headers, stream=True)
        if response.status_code in (200, 206):
            return response
        if response.status_code == 404:
            raise FileMissing(path)
        if response.status_code == 412:
            raise ResourceModifiedError(response=response)
        if response.status_code == 416 and offset == 0:
            return await self._get(path, 0, None, etag)  # an empty file has no first byte to range from
        raise _storage_error(response)

    async def delete(self, path: str, *, etag: str = "") -> bool:
        """Delete the file at ``path``; False when there was none.

        With ``etag``, only that version of it: FileChanged when the file there now is another one.
        """
        conditions = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            await self._container.get_blob_client(path).delete_blob(**conditions)
        except ResourceNotFoundError:
            return False
        except ResourceModifiedError:
            # Azurite answers 412, not 404, to a version of a file that is gone: look.
            try:
                await self.properties(path)
            except FileMissing:
                return False
            raise FileChanged(path) from None
        return True

    async def readable_urls(self, paths: list[str], valid_for: timedelta) -> list[str]:
        """URLs of the files at ``paths`` with a read-only SAS valid for ``valid_for``: sources of server-side copies.

        With an account key (a connection string, Azurite's included) the SAS is signed with it;
        with a managed identity it is a user delegation SAS, signed with a key the identity gets
        once for all ``paths`` (it needs Storage Blob Delegator, part of Blob Data Contributor).
        """
        now = datetime.now(UTC)
        expiry = now + valid_for
        account_key = getattr(self._blobs.credential, "account_key", None)
        signing = (
            {"account_key": account_key}
            if account_key
            else {"user_delegation_key": await self._blobs.get_user_delegation_key(now - timedelta(minutes=5), expiry)}
        )  # the delegation key starts earlier: clocks of the service and the account differ a little
        urls = []
        for path in paths:
            sas = generate_blob_sas(
                self._blobs.account_name, self.file_system, path, permission=BlobSasPermissions(read=True), expiry=expiry,
                **signing,
            )  # fmt: skip
            urls.append(f"{self._container.get_blob_client(path).url}?{sas}")
        return urls

    async def head(self, path: str, length: int) -> tuple[bytes, LakeFile, dict[str, str]]:
        """The first ``length`` bytes of the file (fewer when it is shorter), the file, and its blob metadata."""
        response = await self._get(path, 0, length, None)
        data = await response.read()
        headers = response.headers
        # A ranged read's size is the range's; the file's is after the slash of "bytes 0-N/SIZE".
        content_range = headers.get("Content-Range")
        size = int(content_range.rpartition("/")[2]) if content_range else int(headers["Content-Length"])
        file = LakeFile(path, size, normalized_etag(headers["ETag"]), _last_modified(response))
        metadata = {
            name[len(_METADATA_HEADER) :]: value for name, value in headers.items() if name.lower().startswith(_METADATA_HEADER)
        }
        return data, file, metadata

    async def copy(self, source: str, target: str) -> None:
        """Copy the file at ``source`` to ``target`` (replacing any file there) inside the storage account.

        Copy Blob (``copy_from_url``): the storage service copies the bytes, which never pass
        through this process, and the copy is whole or absent, as every write here.
        """
        [url] = await self.readable_urls([source], _COPY_SAS_LIFETIME)
        status = await copy_from_url(self._container.get_blob_client(target), url)
        if status != "success":
            raise CopyFailed(f"copying {source} to {target} ended {status}")

    async def splice(
        self, path: str, head: bytes, tail_offset: int, tail_length: int, *, etag: str, metadata: dict[str, str]
    ) -> LakeFile:
        """Replace the file at ``path`` by ``head`` followed by its own bytes from ``tail_offset`` on.

        The tail is staged from the file itself by Put Block From URL, so it never passes
        through this process; the block list is committed only if the file still has ``etag``
        (FileChanged otherwise), atomically, and with ``metadata`` on the new version.
        """
        blob = self._container.get_blob_client(path)
        [source] = await self.readable_urls([path], _COPY_SAS_LIFETIME)
        blocks = [BlobBlock(_block_id(0))]
        await blob.stage_block(blocks[0].id, head, length=len(head))
        for number, offset in enumerate(range(tail_offset, tail_offset + tail_length, _SPLICE_BLOCK), start=1):
            length = min(_SPLICE_BLOCK, tail_offset + tail_length - offset)
            blocks.append(BlobBlock(_block_id(number)))
            await blob.stage_block_from_url(blocks[-1].id, source, source_offset=offset, source_length=length)
        try:
            result = await blob.commit_block_list(
                blocks, metadata=metadata, content_settings=ContentSettings(content_type=_CONTENT_TYPE),
                etag=etag, match_condition=MatchConditions.IfNotModified,
            )  # fmt: skip
        except (ResourceModifiedError, ResourceNotFoundError):
            raise FileChanged(path) from None
        return LakeFile(path, len(head) + tail_length, normalized_etag(result["etag"]), result.get("last_modified"))

    async def list(self, prefix: str) -> AsyncIterator[LakeFile]:
        """Every file under ``prefix``, in name order."""
        async for blob in self._container.list_blobs(name_starts_with=prefix):
            if blob.size == 0 and blob.name.endswith("/"):
                continue  # a directory entry on a hierarchical account
            yield LakeFile(blob.name, blob.size, normalized_etag(blob.etag), blob.last_modified)


def _last_modified(response: AsyncHttpResponse) -> datetime | None:
    value = response.headers.get("Last-Modified")
    return parsedate_to_datetime(value) if value else None

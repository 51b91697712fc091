"""The lake adapter: instance files in one file system of the customer's storage account.

Writes are atomic: an instance is either absent or whole. On the blob endpoint a
single Put Blob, or a block list committed at the end, is atomic; on a
hierarchical-namespace (ADLS Gen2) account the file is written under a staging
folder outside the contract layout, then renamed into place, which is atomic.
Which one applies is detected from the account, not configured (Azurite, the local
emulator, has no dfs endpoint). Reads, ranged reads, listing and deletes use the
blob endpoint, which serves both kinds of account (docs/lake-layout.md).

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
from typing import BinaryIO

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobBlock, BlobSasPermissions, ContentSettings, generate_blob_sas
from azure.storage.blob.aio import BlobClient, BlobServiceClient
from azure.storage.filedatalake.aio import DataLakeServiceClient

STAGING_FOLDER = "staging"  # at the file-system root, outside AHDS/: never part of the contract
_CONTENT_TYPE = "application/dicom"
_UPLOAD_CONCURRENCY = 2
_COPY_SAS_LIFETIME = timedelta(hours=1)  # a server-side copy reads its source within seconds
_COPY_POLL_SECONDS = 0.5
_COPY_POLLS = 600  # five minutes for one file: a cross-account copy Azure finishes asynchronously
_SPLICE_BLOCK = 256 * 1024 * 1024  # bytes one Put Block From URL stages (the service allows 4000 MiB)


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


def normalized_etag(etag: str) -> str:
    """The ETag in quotes, whichever form the SDK call returned."""
    return f'"{etag.strip(chr(34))}"'


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
        downloader = await self._download(path, offset, length)
        return await downloader.readall()

    async def stream(
        self, path: str, offset: int = 0, length: int | None = None, *, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes at ``path`` in chunks; with ``etag``, only if the file still has it."""
        downloader = await self._download(path, offset, length, etag=etag)
        async for chunk in downloader.chunks():
            yield chunk

    async def _download(self, path: str, offset: int, length: int | None, etag: str | None = None):
        conditions = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            return await self._container.get_blob_client(path).download_blob(
                # The SDK wants an offset whenever a length is given, 0 included.
                offset=offset if offset or length is not None else None,
                length=length,
                max_concurrency=_UPLOAD_CONCURRENCY,
                **conditions,
            )
        except ResourceNotFoundError:
            raise FileMissing(path) from None

    async def delete(self, path: str) -> bool:
        """Delete the file at ``path``; False when there was none."""
        try:
            await self._container.get_blob_client(path).delete_blob()
        except ResourceNotFoundError:
            return False
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
        downloader = await self._download(path, 0, length)
        data = await downloader.readall()
        properties = downloader.properties
        # A ranged read's size is the range's; the file's is after the slash of "bytes 0-N/SIZE".
        content_range = getattr(properties, "content_range", None)
        size = int(content_range.rpartition("/")[2]) if content_range else properties.size
        file = LakeFile(path, size, normalized_etag(properties.etag), properties.last_modified)
        return data, file, dict(properties.metadata or {})

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

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

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, ContentSettings, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.filedatalake.aio import DataLakeServiceClient

STAGING_FOLDER = "staging"  # at the file-system root, outside AHDS/: never part of the contract
_CONTENT_TYPE = "application/dicom"
_UPLOAD_CONCURRENCY = 2


class InstanceExists(Exception):
    """A create-only write found a file already at the path."""


class FileMissing(Exception):
    """No file at the path."""


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

    async def list(self, prefix: str) -> AsyncIterator[LakeFile]:
        """Every file under ``prefix``, in name order."""
        async for blob in self._container.list_blobs(name_starts_with=prefix):
            if blob.size == 0 and blob.name.endswith("/"):
                continue  # a directory entry on a hierarchical account
            yield LakeFile(blob.name, blob.size, normalized_etag(blob.etag), blob.last_modified)


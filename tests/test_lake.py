"""The lake adapter's own requests (Get Blob, a small file's Put Blob) against Azurite: answers, errors, request counts.

A read whose connection breaks mid-body is replayed through a TCP proxy that cuts the
first answers after a number of bytes, so the resume is exercised on a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from io import BytesIO

import pytest
from azure.core.exceptions import HttpResponseError, ResourceModifiedError

from dicom_core.settings import Connection
from dicom_core.storage.connections import READ_CHUNK_BYTES, TRANSFER_BLOCK_BYTES, blob_service
from dicom_core.storage.lake import FileChanged, FileMissing, InstanceExists, Lake
from dicom_core.storage.tables import RequestStatistics

PATH = "AHDS/ws/dicom/svc/Microsoft.Default/1.2/1.2.3/1.2.3.4.dcm"


@contextlib.asynccontextmanager
async def opened_lake(connection_string: str, file_system: str):
    statistics = RequestStatistics()
    lake = Lake(blob_service(Connection(connection_string=connection_string), statistics), None, file_system)
    await lake.prepare()
    statistics.reset()
    try:
        yield lake, statistics
    finally:
        await lake.close()


@pytest.fixture
async def lake(settings):
    async with opened_lake(settings.lake.connection_string, settings.file_system) as (opened, statistics):
        yield opened, statistics


async def test_a_small_file_is_one_put_and_reads_back_whole_and_in_ranges(lake):
    lake, statistics = lake
    content = os.urandom(50_000)
    statistics.reset()
    written = await lake.write(PATH, BytesIO(content), len(content), overwrite=False)
    assert statistics.lake_requests == 1
    assert written.size == len(content) and written.etag.startswith('"') and written.last_modified is not None
    assert (await lake.properties(PATH)).etag == written.etag

    statistics.reset()
    assert await lake.read(PATH) == content
    assert await lake.read(PATH, 1_000, 2_000) == content[1_000:3_000]
    assert await lake.read(PATH, 49_000) == content[49_000:]
    assert statistics.lake_requests == 3
    assert statistics.lake_bytes_read == len(content) + 2_000 + 1_000

    chunks = [chunk async for chunk in lake.stream(PATH, 10, 100, etag=written.etag)]
    assert b"".join(chunks) == content[10:110]


async def test_a_create_only_write_never_replaces_a_file(lake):
    lake, _ = lake
    first = await lake.write(PATH, BytesIO(b"first"), 5, overwrite=False)
    with pytest.raises(InstanceExists):
        await lake.write(PATH, BytesIO(b"second"), 6, overwrite=False)
    assert await lake.read(PATH) == b"first"
    replaced = await lake.write(PATH, BytesIO(b"second"), 6, overwrite=True)
    assert replaced.etag != first.etag and await lake.read(PATH) == b"second"


async def test_a_file_larger_than_one_block_is_written_in_blocks_and_read_in_one_stream(lake):
    lake, statistics = lake
    content = os.urandom(TRANSFER_BLOCK_BYTES + 1_000)
    statistics.reset()
    written = await lake.write(PATH, BytesIO(content), len(content), overwrite=False)
    assert statistics.lake_requests == 3  # two Put Block and a Put Block List
    statistics.reset()
    chunks = [chunk async for chunk in lake.stream(PATH, etag=written.etag)]
    assert b"".join(chunks) == content
    assert statistics.lake_requests == 1
    # Chunks of up to READ_CHUNK_BYTES, not the SDK's default 4 KiB (over a thousand chunks for this file).
    assert max(len(chunk) for chunk in chunks) <= READ_CHUNK_BYTES
    assert len(chunks) < len(content) // 4096 // 4


async def test_reads_conditional_on_an_etag_and_of_missing_files(lake):
    lake, _ = lake
    written = await lake.write(PATH, BytesIO(b"version 1"), 9, overwrite=False)
    await lake.write(PATH, BytesIO(b"version 2"), 9, overwrite=True)
    with pytest.raises(ResourceModifiedError):
        await anext(lake.stream(PATH, etag=written.etag))
    with pytest.raises(FileMissing):
        await lake.read(PATH + ".missing")
    with pytest.raises(FileMissing):
        await lake.properties(PATH + ".missing")


async def test_a_delete_of_one_version_leaves_any_other(lake):
    lake, _ = lake
    first = await lake.write(PATH, BytesIO(b"version 1"), 9, overwrite=False)
    second = await lake.write(PATH, BytesIO(b"version 2"), 9, overwrite=True)
    with pytest.raises(FileChanged):
        await lake.delete(PATH, etag=first.etag)
    assert await lake.read(PATH) == b"version 2"
    assert await lake.delete(PATH, etag=second.etag) is True
    assert await lake.delete(PATH, etag=second.etag) is False  # gone: nothing to delete, whichever version
    await lake.write(PATH, BytesIO(b"version 3"), 9, overwrite=False)
    assert await lake.delete(PATH) is True  # without a version: whatever is there


async def test_a_refusal_keeps_the_services_error_code(lake):
    lake, _ = lake
    await lake.write(PATH, BytesIO(b"0123456789"), 10, overwrite=False)
    with pytest.raises(HttpResponseError) as refused:
        await lake.read(PATH, 100, 10)  # a range that starts after the end of the file
    assert refused.value.status_code == 416 and refused.value.error_code == "InvalidRange"


async def test_the_head_of_a_file_with_its_size_and_metadata_and_of_an_empty_file(lake):
    lake, _ = lake
    content = os.urandom(5_000)
    await lake.write(PATH, BytesIO(content), len(content), overwrite=False)
    await lake._container.get_blob_client(PATH).set_blob_metadata({"dicomupdatedfrom": '"0x1"', "dicomoffsetshift": "12"})
    head, file, metadata = await lake.head(PATH, 128)
    assert head == content[:128] and file.size == 5_000
    assert metadata == {"dicomupdatedfrom": '"0x1"', "dicomoffsetshift": "12"}
    assert file.etag == (await lake.properties(PATH)).etag

    await lake.write(PATH, BytesIO(b""), 0, overwrite=True)
    head, file, metadata = await lake.head(PATH, 128)
    assert (head, file.size, metadata) == (b"", 0, {})


class CuttingProxy:
    """A TCP proxy to Azurite's blob port that closes each of its first ``cuts`` connections after ``after`` bytes of answers."""

    def __init__(self, target_port: int, *, cuts: int, after: int) -> None:
        self.target_port, self.cuts, self.after = target_port, cuts, after
        self.cut = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        upward = asyncio.create_task(self._relay(reader, upstream_writer, cutting=False))
        try:
            await self._relay(upstream_reader, writer, cutting=True)
        finally:
            upward.cancel()
            writer.close()
            upstream_writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, cutting: bool) -> None:
        relayed = 0
        while data := await reader.read(65536):
            if cutting and self.cut < self.cuts and relayed + len(data) >= self.after:
                self.cut += 1
                writer.write(data[: self.after - relayed])
                await writer.drain()
                return  # the connection closes in the middle of an answer
            relayed += len(data)
            writer.write(data)
            await writer.drain()


@pytest.mark.parametrize("cuts", [1, 3])
async def test_a_read_cut_off_mid_body_resumes_where_it_stopped(azurite_server, settings, cuts):
    content = os.urandom(3_000_000)
    async with opened_lake(settings.lake.connection_string, settings.file_system) as (direct, _):
        written = await direct.write(PATH, BytesIO(content), len(content), overwrite=False)
    proxy = CuttingProxy(azurite_server.blob_port, cuts=cuts, after=700_000)
    port = await proxy.start()
    through_proxy = settings.lake.connection_string.replace(f":{azurite_server.blob_port}/", f":{port}/")
    try:
        async with opened_lake(through_proxy, settings.file_system) as (lake, statistics):
            statistics.reset()
            assert await lake.read(PATH, 100, None) == content[100:]
            assert proxy.cut == cuts
            assert statistics.lake_requests == cuts + 1  # each resume one ranged read, If-Match on the same version
            statistics.reset()
            assert b"".join([chunk async for chunk in lake.stream(PATH, etag=written.etag)]) == content
    finally:
        await proxy.stop()


async def test_a_read_cut_off_more_often_than_it_resumes_fails(azurite_server, settings):
    content = os.urandom(1_000_000)
    async with opened_lake(settings.lake.connection_string, settings.file_system) as (direct, _):
        await direct.write(PATH, BytesIO(content), len(content), overwrite=False)
    proxy = CuttingProxy(azurite_server.blob_port, cuts=10, after=100_000)
    port = await proxy.start()
    through_proxy = settings.lake.connection_string.replace(f":{azurite_server.blob_port}/", f":{port}/")
    try:
        async with opened_lake(through_proxy, settings.file_system) as (lake, _):
            with pytest.raises(HttpResponseError):
                await lake.read(PATH)
            assert proxy.cut == 4  # the read and its three resumes
    finally:
        await proxy.stop()

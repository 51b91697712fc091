"""WADO-RS behaviour against a real Azurite: levels, zip, negotiation, failures, ranges, rendering, clients."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import secrets
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import openjpeg
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom.uid import generate_uid

from dicom_core.http.app import create_app
from dicom_core.http.media_types import MediaType
from dicom_core.http.multipart_response import BUFFERED_BODY_BYTES
from dicom_core.operations.retrieve import instances as retrieve_operation
from dicom_core.operations.retrieve import streams as retrieve_streams
from dicom_core.operations.retrieve.frames import FRAME_READ_AHEAD_BYTES
from dicom_core.operations.retrieve.reading import ReadAhead, open_ranges
from dicom_core.services import Services
from dicom_core.settings import Settings
from dicom_core.storage import index as index_module
from dicom_core.storage.layout import InstanceKey, Scope
from tests.dicom_files import file_bytes, multipart, new_instance, preamble_zeroed, stow_headers
from tests.retrieve_helpers import (
    EXPLICIT_LITTLE,
    bulk_data_uris,
    frame_count,
    instance_url,
    split_multipart,
    store,
    stored_frames,
    uids,
)
from tests.server import running_server

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def _series(client, count: int, **attributes) -> tuple[str, str, list[bytes]]:
    study, series = generate_uid(), generate_uid()
    instances = [new_instance(study=study, series=series, InstanceNumber=number + 1, **attributes) for number in range(count)]
    await store(client, instances)
    return study, series, instances


async def test_study_and_series_stream_every_instance_as_stored(client):
    study, series, instances = await _series(client, 12)
    other = new_instance(study=study)  # a second series in the same study
    await store(client, [other])
    expected = {uids(data)[2]: preamble_zeroed(data) for data in [*instances, other]}

    response = await client.get(f"/v2/studies/{study}", headers={"Accept": AS_STORED})
    assert response.status_code == 200
    bodies = [content for _, content in split_multipart(response)]
    assert sorted(bodies) == sorted(expected.values())

    response = await client.get(f"/v2/studies/{study}/series/{series}", headers={"Accept": AS_STORED})
    assert sorted(content for _, content in split_multipart(response)) == sorted(preamble_zeroed(d) for d in instances)


async def test_study_and_series_as_zip(client):
    study, series, instances = await _series(client, 3)
    response = await client.get(f"/v2/studies/{study}/series/{series}", headers={"Accept": "application/zip"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None  # every CRC-32 checks
        names = {f"{study}/{series}/{uids(data)[2]}.dcm": preamble_zeroed(data) for data in instances}
        assert {name: archive.read(name) for name in archive.namelist()} == names


async def test_responses_start_before_the_last_file_is_read(client, services, monkeypatch):
    """At most RETRIEVE_CONCURRENCY files are open ahead of the part being sent."""
    monkeypatch.setattr(retrieve_streams, "RETRIEVE_CONCURRENCY", 2)
    study, _, instances = await _series(client, 6)
    opened: list[str] = []
    original = services.lake.stream

    def counting(path, *arguments, **options):
        opened.append(path)
        return original(path, *arguments, **options)

    monkeypatch.setattr(services.lake, "stream", counting)
    parts = await retrieve_operation.retrieve_instances(services, Scope("Microsoft.Default", study), "*")
    first = await anext(parts)
    assert len(opened) <= 3  # the part being sent and two ahead
    bodies = [b"".join([chunk async for chunk in first.chunks])]
    bodies += [b"".join([chunk async for chunk in part.chunks]) async for part in parts]
    assert sorted(bodies) == sorted(preamble_zeroed(data) for data in instances) and len(opened) == len(instances)


async def test_a_small_answer_is_sent_whole_and_a_large_one_of_one_part_streams_with_its_length(client):
    """A body within BUFFERED_BODY_BYTES is sent whole; a larger one of one part of known size streams with a
    Content-Length (a frame, an instance, bulk data); one of several parts in chunks, without one."""
    small, large = new_instance(), new_instance(template="eCT_Supplemental.dcm")  # 1 MB, two 512 KB frames
    await store(client, [small, large])
    assert len(small) < BUFFERED_BODY_BYTES < len(large)
    for url, accept in (
        (instance_url(small), "application/dicom; transfer-syntax=*"),
        (instance_url(small), AS_STORED),
        (f"{instance_url(small)}/frames/1", FRAMES),
        (f"{instance_url(small)}/metadata", "application/dicom+json"),
        (instance_url(large), "application/dicom; transfer-syntax=*"),
        (instance_url(large), AS_STORED),
        (f"{instance_url(large)}/frames/2", FRAMES),
        (f"{instance_url(large)}/bulkdata/7FE00010", 'multipart/related; type="application/octet-stream"'),
    ):
        response = await client.get(url, headers={"Accept": accept})
        assert response.status_code == 200 and response.headers["content-length"] == str(len(response.content)), url
    frames = stored_frames(pydicom.dcmread(io.BytesIO(large)))
    response = await client.get(f"{instance_url(large)}/frames/2", headers={"Accept": FRAMES})
    assert [content for _, content in split_multipart(response)] == [frames[1]]
    response = await client.get(instance_url(large), headers={"Accept": AS_STORED})
    assert [content for _, content in split_multipart(response)] == [preamble_zeroed(large)]

    study = uids(large)[0]
    for url, accept in ((f"/v2/studies/{study}", AS_STORED), (f"{instance_url(large)}/frames/1,2", FRAMES)):
        response = await client.get(url, headers={"Accept": accept})
        assert response.status_code == 200 and "content-length" not in response.headers, url
    assert [content for _, content in split_multipart(response)] == frames


def test_a_streamed_body_matches_its_content_length_on_the_wire(settings, tmp_path):
    """Through the local server (h11 refuses a body that differs from its Content-Length): one part, whole and right."""
    large = new_instance(template="eCT_Supplemental.dcm")
    frames = stored_frames(pydicom.dcmread(io.BytesIO(large)))
    with running_server(settings, tmp_path / "server.log") as (url, _), httpx.Client(base_url=url.removesuffix("/v2")) as http:
        body, boundary = multipart([large])
        assert http.post("/v2/studies", content=body, headers=stow_headers(boundary)).status_code == 200
        for path, accept, expected in (
            (instance_url(large), "application/dicom; transfer-syntax=*", preamble_zeroed(large)),
            (f"{instance_url(large)}/frames/1", FRAMES, frames[0]),
            (f"{instance_url(large)}/bulkdata/7FE00010", 'multipart/related; type="application/octet-stream"', b"".join(frames)),
        ):
            response = http.get(path, headers={"Accept": accept})
            assert response.status_code == 200 and "transfer-encoding" not in response.headers, path
            assert response.headers["content-length"] == str(len(response.content)), path
            body = response.content if accept.startswith("application/dicom") else split_multipart(response)[0][1]
            assert body == expected, path


async def test_transfer_syntaxes_of_instances(client):
    data = file_bytes("JPEG2000.dcm")
    await store(client, [data])
    url = instance_url(data)
    for accept, syntax in [
        ('multipart/related; type="application/dicom"', EXPLICIT_LITTLE),
        (f"multipart/related; type=application/dicom; transfer-syntax={EXPLICIT_LITTLE}", EXPLICIT_LITTLE),
        ("multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.91"),
        ("application/dicom; transfer-syntax=*", "1.2.840.10008.1.2.4.91"),
    ]:
        response = await client.get(url, headers={"Accept": accept})
        assert response.status_code == 200, (accept, response.text)
        if accept.startswith("multipart/"):
            media_type = split_multipart(response)[0][0]
        else:
            media_type = MediaType.parse(response.headers["content-type"])
            assert response.content == preamble_zeroed(data)
        assert media_type.parameters["transfer-syntax"] == syntax

    jpeg = "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"
    response = await client.get(url, headers={"Accept": jpeg})
    assert response.status_code == 406
    assert "cannot be transcoded to 1.2.840.10008.1.2.4.50" in response.json()["message"]
    response = await client.get(url, headers={"Accept": "application/pdf"})
    assert response.status_code == 406
    assert "multipart/related" in response.json()["message"]


async def test_unknown_levels_are_404_naming_the_level(client):
    study, series, [data] = await _series(client, 1)
    sop = uids(data)[2]
    unknown = generate_uid()
    cases = {
        f"/v2/studies/{unknown}": f"study {unknown} is not stored",
        f"/v2/studies/{study}/series/{unknown}": f"series {unknown} is not stored in study {study}",
        f"/v2/studies/{study}/series/{series}/instances/{unknown}": f"instance {unknown} is not stored in series {series}",
        f"/v2/studies/{study}/series/{unknown}/instances/{sop}/metadata": f"series {unknown} is not stored",
        f"/v2/partitions/other/studies/{study}/metadata": f"study {study} is not stored in partition other",
        f"/v2/studies/{study}/series/{series}/instances/{sop}/frames/2": "frame 2 does not exist: instance",
    }
    for url, message in cases.items():
        response = await client.get(url)
        assert response.status_code == 404, url
        assert message in response.json()["message"], url
    for url in [
        f"/v2/studies/{study}/series/{series}/instances/{sop}/frames/1,x",
        f"/v2/studies/{study}/series/{series}/instances/{sop}/frames/0",
    ]:
        response = await client.get(url)
        assert response.status_code == 400
        assert "malformed" in response.json()["message"]
    response = await client.get(f"/v2/studies/1..2/series/{series}")
    assert response.status_code == 400


async def test_file_changed_or_removed_outside_the_api_is_reported_and_flagged(client, services):
    _, _, [changed, removed] = await _series(client, 2)
    for data in (changed, removed):
        assert (await client.get(instance_url(data), headers={"Accept": AS_STORED})).status_code == 200
    blob = services.lake._container.get_blob_client
    await blob(services.layout.instance_path(_key(changed))).upload_blob(b"rewritten", overwrite=True)
    await services.lake.delete(services.layout.instance_path(_key(removed)))

    response = await client.get(instance_url(changed), headers={"Accept": AS_STORED})
    assert response.status_code == 409
    assert "modified in the lake outside the API" in response.json()["message"]
    response = await client.get(f"{instance_url(removed)}/frames/1", headers={"Accept": "multipart/related; type=*/*"})
    assert response.status_code == 404
    assert "removed from the lake outside the API" in response.json()["message"]
    for data, reason in ((changed, "modified"), (removed, "removed")):
        entity = await services.index.get_instance(_key(data))
        assert reason in entity.reconciliation_needed


FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@asynccontextmanager
async def _another_host(settings: Settings) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    """A second process over the same storage: its own services, so its own cache of instance records."""
    services = await Services.open(settings)
    try:
        transport = httpx.ASGITransport(app=create_app(settings, services))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield services, client
    finally:
        await services.close()


async def _costs(services: Services, client: httpx.AsyncClient, url: str, accept: str) -> tuple[httpx.Response, int, int]:
    """The answer to GET ``url``, and the index and lake requests it cost."""
    services.statistics.reset()
    response = await client.get(url, headers={"Accept": accept})
    return response, services.statistics.requests, services.statistics.lake_requests


async def test_a_known_instance_or_frame_costs_one_lake_request_and_no_index_request(client, settings):
    study, series, instances = await _series(client, 3)
    async with _another_host(settings) as (host, other):
        for data, suffix, accept in ((instances[0], "", AS_STORED), (instances[1], "/frames/1", FRAMES)):
            url = instance_url(data) + suffix
            # The host has not seen it: one point read of the index, then one read of the file.
            response, index_requests, lake_requests = await _costs(host, other, url, accept)
            assert response.status_code == 200 and (index_requests, lake_requests) == (1, 1)
            # Now the path and the ETag are known: the file alone, read on the condition that it still has that ETag.
            response, index_requests, lake_requests = await _costs(host, other, url, accept)
            assert response.status_code == 200 and (index_requests, lake_requests) == (0, 1)
            assert host.statistics.entities_read == 0
            [(_, content)] = split_multipart(response)
            assert content == (preamble_zeroed(data) if not suffix else pydicom.dcmread(io.BytesIO(data)).PixelData)
        # The series metadata a viewer reads first makes every instance of the series known.
        assert (await other.get(f"/v2/studies/{study}/series/{series}/metadata")).status_code == 200
        response, index_requests, lake_requests = await _costs(host, other, f"{instance_url(instances[2])}/frames/1", FRAMES)
        assert response.status_code == 200 and (index_requests, lake_requests) == (0, 1)


async def test_a_frame_that_is_nearly_all_of_its_file_is_read_as_the_whole_file(client, services):
    """One Get Blob either way; a range would make Azurite read its bytes twice (reading.open_ranges)."""
    single = new_instance()  # one 32 KB frame in a 39 KB file
    multi = new_instance(template="emri_small.dcm")  # ten 8 KB frames: one leaves 76 KB of the file out
    await store(client, [single, multi])
    for data, read_whole in ((single, True), (multi, False)):
        dataset = pydicom.dcmread(io.BytesIO(data))
        frame = stored_frames(dataset)[-1]
        url = f"{instance_url(data)}/frames/{frame_count(dataset)}"
        await client.get(url, headers={"Accept": FRAMES})  # now the record is known: no read-ahead
        services.statistics.reset()
        response = await client.get(url, headers={"Accept": FRAMES})
        assert response.status_code == 200
        assert [content for _, content in split_multipart(response)] == [frame]
        assert services.statistics.lake_requests == 1
        assert services.statistics.lake_bytes_read == (len(data) if read_whole else len(frame))


async def test_a_frame_decoded_reads_its_header_with_it_from_one_read_when_it_is_nearly_the_whole_file(client, services):
    """Decoding needs the header too: for a CT frame one whole-file read gives both, for an MR's one of ten, two reads."""
    single, multi = new_instance(), new_instance(template="emri_small.dcm")
    await store(client, [single, multi])
    jpeg_2000 = "multipart/related; type=image/jp2"  # each frame decoded and encoded again
    for data, lake_requests in ((single, 1), (multi, 2)):
        dataset = pydicom.dcmread(io.BytesIO(data))
        expected = dataset.pixel_array[0] if frame_count(dataset) > 1 else dataset.pixel_array
        for suffix, accept in (("/frames/1", jpeg_2000), ("/frames/1/rendered", "image/png")):
            url = instance_url(data) + suffix
            await client.get(url, headers={"Accept": accept})  # now the record is known: no read-ahead
            services.statistics.reset()
            response = await client.get(url, headers={"Accept": accept})
            assert response.status_code == 200, response.text
            assert services.statistics.lake_requests == lake_requests, suffix
            if suffix == "/frames/1":
                [(_, codestream)] = split_multipart(response)
                assert np.array_equal(openjpeg.decode(codestream), expected)


async def test_ranges_of_a_file_come_whole_or_cut_from_one_read_across_its_chunks(client, services):
    data = new_instance(template="eCT_Supplemental.dcm")  # 1 MB: the lake streams it in many chunks
    await store(client, [data])
    stored = preamble_zeroed(data)
    record = await services.index.get_instance(_key(data))
    end = len(stored)
    # Most of the file, in ranges that begin and end inside chunks and at their edges, some touching.
    nearly_all = [(100, 65_436), (65_536, 5), (65_541, 200_000), (300_000, end - 300_000 - 1_000)]
    apart = [(1, 10), (200_000, 70_000), (end - 10, 10)]
    out_of_order = [(300_000, end - 300_000), (0, 300_000)]  # all of it, but not in file order: range by range
    for ranges, lake_requests in ((nearly_all, 1), (apart, len(apart)), ([(0, end)], 1), (out_of_order, 2)):
        services.statistics.reset()
        chunks = [chunk async for chunk in await open_ranges(services, record, ranges)]
        assert b"".join(chunks) == b"".join(stored[offset : offset + length] for offset, length in ranges)
        assert services.statistics.lake_requests == lake_requests
        assert len(chunks) > 1


@pytest.mark.parametrize("suffix", ["", "/frames/1"])
async def test_a_first_retrieve_asks_for_the_file_while_the_index_read_is_in_flight(client, settings, monkeypatch, suffix):
    _, _, [data] = await _series(client, 1)
    async with _another_host(settings) as (host, other):
        file_requested = asyncio.Event()
        lake_open, point_read = host.lake.open, host.index.get_instance

        async def open_file(*args, **options):
            file_requested.set()
            return await lake_open(*args, **options)

        async def index_answering_once_the_file_was_asked_for(key):
            # Were the two reads sent one after the other, the file would be asked for only after this returned.
            await asyncio.wait_for(file_requested.wait(), 5)
            return await point_read(key)

        monkeypatch.setattr(host.lake, "open", open_file)
        monkeypatch.setattr(host.index, "get_instance", index_answering_once_the_file_was_asked_for)
        response, index_requests, lake_requests = await _costs(
            host, other, instance_url(data) + suffix, FRAMES if suffix else AS_STORED
        )
        assert response.status_code == 200 and (index_requests, lake_requests) == (1, 1)
        expected = pydicom.dcmread(io.BytesIO(data)).PixelData if suffix else preamble_zeroed(data)
        assert split_multipart(response)[0][1] == expected


async def test_a_first_frame_read_ahead_serves_a_file_up_to_its_limit_and_is_dropped_beyond(client, settings):
    small = new_instance(template="emri_small.dcm")  # 84 KB, ten frames: read ahead, every frame cut from it
    large = new_instance(template="eCT_Supplemental.dcm")  # 1.05 MB, two frames: over FRAME_READ_AHEAD_BYTES
    await store(client, [small, large])
    assert len(small) < FRAME_READ_AHEAD_BYTES < len(large)
    for data, lake_requests in ((small, 1), (large, 2)):
        frames = stored_frames(pydicom.dcmread(io.BytesIO(data)))
        async with _another_host(settings) as (host, other):
            response, index_requests, lake_requests_made = await _costs(host, other, f"{instance_url(data)}/frames/1", FRAMES)
            assert response.status_code == 200 and split_multipart(response)[0][1] == frames[0]
            assert (index_requests, lake_requests_made) == (1, lake_requests)
        async with _another_host(settings) as (host, other):
            # All of them at once: one part takes the read-ahead, the others read their own range.
            numbers = ",".join(str(number) for number in range(1, len(frames) + 1))
            response, _, lake_requests_made = await _costs(host, other, f"{instance_url(data)}/frames/{numbers}", FRAMES)
            assert response.status_code == 200
            assert [content for _, content in split_multipart(response)] == frames
            assert lake_requests_made == (1 + len(frames) if data is large else len(frames))
            if data is small:
                assert host.statistics.lake_bytes_read == len(small) + sum(len(frame) for frame in frames[1:])


async def test_an_instance_not_stored_costs_the_read_ahead_and_the_reads_that_name_the_missing_level(client, settings):
    study, series, _ = await _series(client, 1)
    url = f"/v2/studies/{study}/series/{series}/instances/{generate_uid()}"
    async with _another_host(settings) as (host, other):
        response, index_requests, lake_requests = await _costs(host, other, url, AS_STORED)
        assert response.status_code == 404 and "is not stored in series" in response.json()["message"]
        assert (index_requests, lake_requests) == (3, 1)  # the instance, its study and its series; the file: 404


async def test_a_read_ahead_serves_only_the_recorded_version_at_the_recorded_path(client, services):
    _, _, [first, second] = await _series(client, 2)
    record = await services.index.get_instance(_key(first))
    other_record = await services.index.get_instance(_key(second))

    async def taken(path: str, instance) -> bytes | None:
        ahead = ReadAhead(services.lake, path)
        try:
            chunks = await ahead.take(instance)
            return None if chunks is None else b"".join([chunk async for chunk in chunks])
        finally:
            await ahead.close()

    assert await taken(record.path, record) == preamble_zeroed(first)
    assert await taken(record.path, other_record) is None  # another path recorded
    assert await taken(record.path, dataclasses.replace(record, etag='"0x1"')) is None  # another version recorded
    assert await taken(record.path, dataclasses.replace(record, etag="")) is None  # an original: no ETag to compare
    assert await taken(f"{record.path}.missing", dataclasses.replace(record, path=f"{record.path}.missing")) is None


async def test_the_cache_keeps_the_records_read_last_within_its_size(client, settings, monkeypatch):
    _, _, instances = await _series(client, 3)
    monkeypatch.setattr(index_module, "INSTANCE_CACHE_BYTES", 5000)  # two single-frame records
    async with _another_host(settings) as (host, other):
        for data in instances:
            assert (await other.get(instance_url(data), headers={"Accept": AS_STORED})).status_code == 200
        for data, expected in ((instances[2], (0, 1)), (instances[1], (0, 1)), (instances[0], (1, 1))):
            response, index_requests, lake_requests = await _costs(host, other, instance_url(data), AS_STORED)
            assert response.status_code == 200 and (index_requests, lake_requests) == expected


async def test_a_cached_record_is_read_again_when_another_host_replaced_or_deleted_the_instance(client, settings):
    study, series, [data] = await _series(client, 1)
    url = instance_url(data)

    async def replace(template: str, **attributes) -> bytes:
        """PUT, through the first host, another file under the same UIDs."""
        replacement = new_instance(study=study, series=series, sop=uids(data)[2], template=template, **attributes)
        body, boundary = multipart([replacement])
        assert (await client.put("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
        return replacement

    async with _another_host(settings) as (host, other):
        assert (await other.get(url, headers={"Accept": AS_STORED})).status_code == 200  # cached: CT_small, 1 frame

        # Frame 2 does not exist in the cached record; decided again on a fresh one (10 frames), it does.
        replacement = await replace("emri_small.dcm")
        response, index_requests, lake_requests = await _costs(host, other, f"{url}/frames/2", FRAMES)
        assert response.status_code == 200 and (index_requests, lake_requests) == (1, 1)
        pixels = pydicom.dcmread(io.BytesIO(replacement)).PixelData
        assert split_multipart(response)[0][1] == pixels[len(pixels) // 10 : 2 * len(pixels) // 10]

        # The cached ETag is no longer the file's: the read fails, the index is read again, the new file is read.
        replacement = await replace("CT_small.dcm", PatientID="PAT-2")
        response, index_requests, lake_requests = await _costs(host, other, url, AS_STORED)
        assert response.status_code == 200 and (index_requests, lake_requests) == (1, 2)
        assert split_multipart(response)[0][1] == preamble_zeroed(replacement)

        # Deleted: the conditional read finds no file, and the index says the instance is not stored (nothing flagged).
        assert (await client.delete(url)).status_code == 204
        for suffix, accept in (("/frames/1", FRAMES), ("", AS_STORED)):
            response = await other.get(url + suffix, headers={"Accept": accept})
            assert response.status_code == 404 and "is not stored" in response.json()["message"]


async def test_metadata_and_single_retrieves_cost_the_same_at_ten_times_the_archive(client, settings):
    study, series, instances = await _series(client, 3)
    urls = [
        (f"/v2/studies/{study}/series/{series}/metadata", "application/dicom+json"),
        (f"/v2/studies/{study}/metadata", "application/dicom+json"),
        (instance_url(instances[0]), AS_STORED),
        (f"{instance_url(instances[1])}/frames/1", FRAMES),
    ]

    async def costs() -> list[tuple[int, int, int]]:
        async with _another_host(settings) as (host, other):  # nothing cached: what any host pays first
            measured = []
            for url, accept in urls:
                response, index_requests, lake_requests = await _costs(host, other, url, accept)
                assert response.status_code == 200, response.text
                measured.append((index_requests, host.statistics.entities_read, lake_requests))
            return measured

    small = await costs()
    await store(client, [new_instance() for _ in range(30)])  # 31 times the studies, 11 times the instances
    assert await costs() == small
    # One key range each for the metadata; the instance and the frame are then known: one lake read each.
    assert small == [(1, 3, 0), (1, 3, 0), (0, 0, 1), (0, 0, 1)]


async def test_archive_tier_says_how_to_rehydrate(client, services):
    _, _, [data] = await _series(client, 1)
    path = services.layout.instance_path(_key(data))
    await services.lake._container.get_blob_client(path).set_standard_blob_tier("Archive")
    response = await client.get(instance_url(data), headers={"Accept": AS_STORED})
    assert response.status_code == 409
    message = response.json()["message"]
    assert "Archive access tier" in message and "az storage blob set-tier --tier Hot" in message and path in message


def _key(data: bytes) -> InstanceKey:
    study, series, sop, _ = uids(data)
    return InstanceKey("Microsoft.Default", study, series, sop)


async def test_series_metadata_etag_and_304(client):
    study, series, instances = await _series(client, 5)
    url = f"/v2/studies/{study}/series/{series}/metadata"
    response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    models = response.json()
    assert sorted(model["00080018"]["Value"][0] for model in models) == sorted(uids(data)[2] for data in instances)
    etag = response.headers["etag"]
    assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304
    assert (await client.get(url, headers={"If-None-Match": f'W/{etag}, "other"'})).status_code == 304
    await store(client, [new_instance(study=study, series=series)])
    changed = await client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag and len(changed.json()) == 6
    assert (await client.get(url, headers={"Accept": "application/dicom+xml"})).status_code == 406


async def test_bulk_data_with_ranges_and_nested_paths(client):
    data = file_bytes("CT_small.dcm")
    await store(client, [data])
    dataset = pydicom.dcmread(io.BytesIO(data))
    url = f"{instance_url(data)}/bulkdata/7FE00010"
    whole = await client.get(url)
    assert whole.status_code == 200 and whole.content == dataset.PixelData
    assert whole.headers["accept-ranges"] == "bytes"
    part = await client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == dataset.PixelData[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(dataset.PixelData)}"
    tail = await client.get(url, headers={"Range": "bytes=-10"})
    assert tail.content == dataset.PixelData[-10:]
    beyond = await client.get(url, headers={"Range": f"bytes={len(dataset.PixelData)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(dataset.PixelData)}"
    multipart = await client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert split_multipart(multipart)[0][1] == dataset.PixelData
    assert (await client.get(f"{instance_url(data)}/bulkdata/7FE0001")).status_code == 400
    assert (await client.get(f"{instance_url(data)}/bulkdata/00081140/0")).status_code == 404  # no such route
    assert (await client.get(f"{instance_url(data)}/bulkdata/0008001Z")).status_code == 400
    assert (await client.get(f"{instance_url(data)}/bulkdata/00091001")).status_code == 404

    nested = file_bytes("rtdose.dcm")  # LUT-like arrays inside sequences
    await store(client, [nested])
    model = (await client.get(f"{instance_url(nested)}/metadata")).json()[0]
    uris = [uri for uri in bulk_data_uris(model) if uri.count("/bulkdata/") and uri.split("/bulkdata/")[1].count("/")]
    for uri in uris:
        assert (await client.get(uri)).status_code == 200


@pytest.mark.parametrize(
    ("query", "accept", "size", "image_format"),
    [
        ("", "image/jpeg", (128, 128), "JPEG"),
        ("?viewport=64,32", "image/png", (32, 32), "PNG"),
        ("?viewport=64,64,0,0,64,32&quality=50", "image/*", (64, 32), "JPEG"),
        ("?window=40,400,linear", "*/*", (128, 128), "JPEG"),
        ("?window=40,400,sigmoid", "image/png", (128, 128), "PNG"),
    ],
)
async def test_rendered_instance_and_frame(client, query, accept, size, image_format):
    data = file_bytes("CT_small.dcm")
    await store(client, [data])
    for path in ("/rendered", "/frames/1/rendered"):
        response = await client.get(f"{instance_url(data)}{path}{query}", headers={"Accept": accept})
        assert response.status_code == 200, response.text
        image = Image.open(io.BytesIO(response.content))
        assert (image.format, image.size) == (image_format, size)


async def test_rendering_applies_the_window_and_colour(client):
    data = file_bytes("CT_small.dcm")
    color = file_bytes("SC_rgb_jpeg_dcmtk.dcm")
    palette = file_bytes("OBXXXX1A.dcm")
    await store(client, [data, color, palette])
    narrow = await client.get(f"{instance_url(data)}/rendered?window=0,1,linear", headers={"Accept": "image/png"})
    wide = await client.get(f"{instance_url(data)}/rendered?window=0,100000,linear", headers={"Accept": "image/png"})
    narrow_values = set(Image.open(io.BytesIO(narrow.content)).get_flattened_data())
    wide_values = set(Image.open(io.BytesIO(wide.content)).get_flattened_data())
    assert narrow_values <= {0, 255} and len(wide_values) < 10  # a 1-wide window is binary; a huge one is flat
    rgb = Image.open(io.BytesIO((await client.get(f"{instance_url(color)}/rendered", headers={"Accept": "image/png"})).content))
    assert rgb.mode == "RGB"
    original = pydicom.dcmread(io.BytesIO(color)).pixel_array
    assert abs(int(rgb.getpixel((0, 0))[0]) - int(original[0, 0, 0])) <= 2
    for query in ("?window=1", "?window=1,0", "?viewport=0,10", "?quality=101", "?window=1,2,cubic"):
        response = await client.get(f"{instance_url(data)}/rendered{query}")
        assert response.status_code == 400, query
    assert (await client.get(f"{instance_url(data)}/rendered", headers={"Accept": "image/gif"})).status_code == 406
    palette_image = await client.get(f"{instance_url(palette)}/rendered", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(palette_image.content)).mode in ("RGB", "L")


async def test_thumbnails_of_study_series_and_instance(client):
    study, series, instances = await _series(client, 3)
    for url in (f"/v2/studies/{study}", f"/v2/studies/{study}/series/{series}", instance_url(instances[0])):
        response = await client.get(f"{url}/thumbnail")
        assert response.status_code == 200
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "JPEG" and max(image.size) == 128
    response = await client.get(f"/v2/studies/{study}/thumbnail?viewport=40,40", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(response.content)).size == (40, 40)


async def test_frames_of_a_multiframe_file_are_ranged_reads(client, services, monkeypatch):
    data = file_bytes("color3d_jpeg_baseline.dcm")  # 120 JPEG frames
    await store(client, [data])
    dataset = pydicom.dcmread(io.BytesIO(data))
    reads: list[tuple[int, int | None]] = []
    original = services.lake.stream

    def recording(path, offset=0, length=None, **options):
        reads.append((offset, length))
        return original(path, offset, length, **options)

    monkeypatch.setattr(services.lake, "stream", recording)
    response = await client.get(f"{instance_url(data)}/frames/60", headers={"Accept": "multipart/related; type=image/jpeg"})
    [(media_type, content)] = split_multipart(response)
    assert media_type.type == "image/jpeg" and media_type.parameters["transfer-syntax"] == "1.2.840.10008.1.2.4.50"
    frames = list(pydicom.encaps.generate_frames(dataset.PixelData, number_of_frames=120))
    assert content == frames[59]
    assert reads and all(length is not None and length < len(data) // 50 for _, length in reads)
    jp2 = await client.get(f"{instance_url(data)}/frames/1", headers={"Accept": "multipart/related; type=image/jp2"})
    [(media_type, content)] = split_multipart(jp2)  # transcoded: a JPEG 2000 codestream (SOC, SIZ markers)
    assert media_type.type == "image/jp2" and media_type.parameters["transfer-syntax"] == "1.2.840.10008.1.2.4.90"
    assert content.startswith(b"\xff\x4f\xff\x51")
    other_syntax = "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert (await client.get(f"{instance_url(data)}/frames/1", headers={"Accept": other_syntax})).status_code == 406


async def test_metadata_too_large_for_the_index_is_read_from_the_file(client, services):
    """Metadata over 64 KiB compressed is not kept in the index entity; retrieve builds it from the file."""
    text = secrets.token_hex(100_000)  # 200 KB that does not compress below the limit
    data = new_instance(TextValue=text)
    await store(client, [data])
    entity = await services.index.get_instance(_key(data))
    assert entity.metadata_json is None
    [model] = (await client.get(f"{instance_url(data)}/metadata")).json()
    assert model["0040A160"]["Value"] == [text]
    assert model["7FE00010"]["BulkDataURI"] == f"http://testserver{instance_url(data)}/bulkdata/7FE00010"
    assert model["00080018"]["Value"] == [uids(data)[2]]


def test_dicomweb_client_retrieve_methods(settings, services, tmp_path):
    study, series = generate_uid(), generate_uid()
    instances = [new_instance(study=study, series=series, InstanceNumber=number + 1) for number in range(2)]
    with running_server(settings, tmp_path / "server.log") as (url, _):
        web = DICOMwebClient(url)
        web.store_instances([pydicom.dcmread(io.BytesIO(data)) for data in instances])
        sop = uids(instances[0])[2]
        assert len(web.retrieve_study(study)) == 2
        assert len(web.retrieve_series(study, series)) == 2
        instance = web.retrieve_instance(study, series, sop)
        assert instance.SOPInstanceUID == sop and instance.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
        stored = web.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
        assert stored.PixelData == pydicom.dcmread(io.BytesIO(instances[0])).PixelData
        assert len(web.retrieve_study_metadata(study)) == 2
        assert len(web.retrieve_series_metadata(study, series)) == 2
        metadata = web.retrieve_instance_metadata(study, series, sop)
        frames = web.retrieve_instance_frames(study, series, sop, [1])
        assert frames[0] == pydicom.dcmread(io.BytesIO(instances[0])).PixelData
        bulk = web.retrieve_bulkdata(metadata["7FE00010"]["BulkDataURI"])
        assert bulk[0] == frames[0]
        rendered = web.retrieve_instance_rendered(study, series, sop, media_types=("image/png",))
        assert Image.open(io.BytesIO(rendered)).format == "PNG"
        assert Image.open(io.BytesIO(web.retrieve_instance_frames_rendered(study, series, sop, [1]))).format == "JPEG"

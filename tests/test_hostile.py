"""Hostile STOW input: each gets a precise 4xx (or a failed instance) and nothing is stored."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import threading
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from tests.dicom_files import minimal_instance, multipart, new_instance, stow_headers
from tests.server import audit_events, running_server, wait_for


async def post_parts(client, parts):
    body, boundary = multipart(parts)
    return await client.post("/v2/studies", content=body, headers=stow_headers(boundary))


def failed_messages(response) -> list[str]:
    return [item["00000902"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


async def nothing_stored(services) -> bool:
    return not [f async for f in services.lake.list("")]


async def test_uids_with_path_characters_are_refused(client, services):
    for uid in ("1.2/../../3", "1.2\\3", "1.2.3%2F4", "../../etc/passwd"):
        response = await post_parts(client, [minimal_instance(SOPInstanceUID=uid)])
        assert response.status_code == 409
        assert "not a valid UID" in failed_messages(response)[0]
    assert await nothing_stored(services)


async def test_uid_over_64_characters_is_refused(client, services):
    response = await post_parts(client, [minimal_instance(StudyInstanceUID="1." + "2" * 70)])
    assert response.status_code == 409
    assert "more than 64" in failed_messages(response)[0]
    assert await nothing_stored(services)


async def test_nested_multipart_part_is_refused(client, services):
    inner, inner_boundary = multipart([new_instance()])
    response = await post_parts(client, [(f"multipart/related; boundary={inner_boundary}", inner)])
    assert response.status_code == 409
    assert "expected application/dicom" in failed_messages(response)[0]
    assert await nothing_stored(services)


async def test_declared_length_beyond_the_body_is_refused(client, services):
    data = bytearray(new_instance(StudyDescription="x" * 20))
    position = data.index(b"\x08\x00\x30\x10LO")  # StudyDescription (0008,1030) LO
    data[position + 6 : position + 8] = struct.pack("<H", 60000)
    response = await post_parts(client, [bytes(data)])
    assert response.status_code == 409
    assert "declares 60000 bytes" in failed_messages(response)[0]
    assert await nothing_stored(services)


def _deflated_instance(zero_bytes: int, elements: bytes = b"") -> bytes:
    """A Deflated Explicit VR Little Endian file whose data set inflates to over ``zero_bytes``, ``elements`` included."""
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = "BOMB"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, dataset)
    header = buffer.getvalue()
    big = b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<L", zero_bytes)  # a private OB of zeros
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(header + elements + big)
    chunk = bytes(1024 * 1024)
    for _ in range(zero_bytes // len(chunk)):
        deflated += compressor.compress(chunk)
    deflated += compressor.compress(bytes(zero_bytes % len(chunk)))
    deflated += compressor.flush()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    meta_buffer = DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(meta_buffer, meta, enforce_standard=True)
    return bytes(128) + b"DICM" + meta_buffer.getvalue() + deflated


async def test_deflate_bomb_is_refused_without_inflating_it(client, services, with_limits):
    with_limits(max_inflated_bytes=8 * 1024 * 1024)
    bomb = _deflated_instance(64 * 1024 * 1024)
    assert len(bomb) < 200_000
    response = await post_parts(client, [bomb])
    assert response.status_code == 409
    assert "DICOM_MAX_INFLATED_BYTES" in failed_messages(response)[0]
    assert await nothing_stored(services)


async def test_small_deflated_instance_is_stored(client, services):
    response = await post_parts(client, [_deflated_instance(1024)])
    assert response.status_code == 200, response.text


def _many_items(items: int) -> bytes:
    """ReferencedSeriesSequence (0008,1115) of undefined length holding ``items`` empty items."""
    sequence = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff"
    return sequence + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _many_items_instance(items: int) -> bytes:
    return minimal_instance() + _many_items(items)


def _private_elements(count: int) -> bytes:
    """``count`` empty private LO elements (7FE1,1010), as a writer could put after the Pixel Data."""
    return b"\xe1\x7f\x10\x10LO\x00\x00" * count


async def test_sequence_with_millions_of_items_is_refused(client, services, with_limits):
    with_limits(max_elements=10_000)
    response = await post_parts(client, [_many_items_instance(50_000)])
    assert response.status_code == 409
    assert "DICOM_MAX_ELEMENTS" in failed_messages(response)[0]
    assert await nothing_stored(services)


async def test_a_sequence_that_never_ends_is_refused(client, services):
    data = minimal_instance() + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    response = await post_parts(client, [data])
    assert response.status_code == 409
    assert "truncated" in failed_messages(response)[0]
    assert await nothing_stored(services)


async def test_unknown_character_set_is_refused(client, services):
    response = await post_parts(client, [minimal_instance(SpecificCharacterSet="ISO_IR 999", PatientName="x")])
    assert response.status_code == 409
    assert "SpecificCharacterSet" in failed_messages(response)[0]
    assert await nothing_stored(services)


async def test_every_defined_character_set_is_accepted(client):
    for charset in ("ISO_IR 192", "ISO_IR 100", "ISO 2022 IR 87", ["ISO 2022 IR 6", "ISO 2022 IR 87"], "GB18030"):
        response = await post_parts(client, [minimal_instance(SpecificCharacterSet=charset)])
        assert response.status_code == 200, (charset, response.text)


async def test_a_valid_instance_next_to_hostile_ones_is_stored(client, services):
    good = new_instance()
    response = await post_parts(client, [_many_items_instance(1), b"\0" * 1000, good])
    assert response.status_code == 202
    dataset = pydicom.dcmread(io.BytesIO(good))
    stored = [f.path async for f in services.lake.list("")]
    assert len(stored) == 2
    assert any(path.endswith(f"/{dataset.SeriesInstanceUID}/{dataset.SOPInstanceUID}.dcm") for path in stored)


async def _stored_ct(client) -> str:
    """The URL of a stored 128 x 128 CT instance."""
    data = new_instance()
    body, boundary = multipart([data])
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    dataset = pydicom.dcmread(io.BytesIO(data))
    return f"/v2/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}"


def _image_size(response) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content)).size


async def test_a_viewport_beyond_the_rendered_pixel_limit_is_a_400_naming_it(client):
    url = await _stored_ct(client)
    for path in ("/rendered", "/frames/1/rendered", "/thumbnail"):
        for viewport in ("100000,100000", "1" + "0" * 60 + ",1" + "0" * 60):
            response = await client.get(f"{url}{path}?viewport={viewport}")
            assert response.status_code == 400, (path, viewport)
            assert "DICOM_MAX_RENDERED_PIXELS" in response.json()["message"]
    assert _image_size(await client.get(f"{url}/rendered?viewport=4096,4096")) == (4096, 4096)  # the default limit


async def test_a_source_region_beyond_the_frame_is_clipped_not_padded(client):
    url = await _stored_ct(client)
    # Pillow's crop of this region was a 10-gigapixel image: DecompressionBombError, a 500.
    assert _image_size(await client.get(f"{url}/rendered?viewport=64,64,0,0,100000,100000")) == (64, 64)
    assert _image_size(await client.get(f"{url}/rendered?viewport=100,100,64,96,100000,100000")) == (100, 50)
    outside = await client.get(f"{url}/rendered?viewport=64,64,128,0,10,10")
    assert outside.status_code == 400
    assert "outside the 128 x 128 frame" in outside.json()["message"]


async def test_a_frame_larger_than_the_limit_needs_a_viewport(client, with_limits):
    url = await _stored_ct(client)
    with_limits(max_rendered_pixels=100 * 100)
    response = await client.get(f"{url}/rendered")
    assert response.status_code == 400
    assert "128 x 128 pixels" in response.json()["message"]
    assert "DICOM_MAX_RENDERED_PIXELS" in response.json()["message"]
    assert _image_size(await client.get(f"{url}/rendered?viewport=100,100")) == (100, 100)
    assert _image_size(await client.get(f"{url}/thumbnail?viewport=50,50")) == (50, 50)


async def test_a_jpeg_wider_than_libjpeg_allows_is_a_400(client, with_limits):
    url = await _stored_ct(client)
    with_limits(max_rendered_pixels=10**8)
    response = await client.get(f"{url}/rendered?viewport=70000,547,0,0,128,1", headers={"Accept": "image/jpeg"})
    assert response.status_code == 400
    assert "65500" in response.json()["message"]


async def test_elements_after_the_pixel_data_count_towards_the_limit(client, services, with_limits):
    with_limits(max_elements=10_000)
    native = new_instance()  # CT_small: native Pixel Data, the last element
    encapsulated = new_instance(template="SC_rgb_jpeg_dcmtk.dcm")
    for data in (native, encapsulated):
        assert "PixelData" in pydicom.dcmread(io.BytesIO(data))  # the elements below come after it
        response = await post_parts(client, [data + _private_elements(20_000)])
        assert response.status_code == 409
        assert "DICOM_MAX_ELEMENTS" in failed_messages(response)[0]
    assert await nothing_stored(services)
    response = await post_parts(client, [native + _private_elements(100), encapsulated + _private_elements(100)])
    assert response.status_code == 200, response.text
    # Fewer stray bytes than an element header after the last element are ignored, as pydicom ignores them.
    assert (await post_parts(client, [new_instance() + b"\0\0\0"])).status_code == 200


async def test_a_deflated_data_set_counts_its_elements_before_pydicom_inflates_it(client, services, with_limits):
    with_limits(max_elements=10_000)
    response = await post_parts(client, [_deflated_instance(0, _many_items(50_000))])
    assert response.status_code == 409
    assert "DICOM_MAX_ELEMENTS" in failed_messages(response)[0]
    assert await nothing_stored(services)
    assert (await post_parts(client, [_deflated_instance(0, _many_items(100))])).status_code == 200


async def test_encapsulated_pixel_data_inside_a_sequence_item_is_walked_as_fragments(client):
    icon = Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel, icon.BitsAllocated = 8, 8, 1, 8
    icon.PixelData = encapsulate([bytes(64), bytes(7)])
    icon["PixelData"].VR = "OB"
    icon["PixelData"].is_undefined_length = True
    data = new_instance(template="SC_rgb_jpeg_dcmtk.dcm", IconImageSequence=[icon])
    assert b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" in data[: data.rindex(b"\xe0\x7f\x10\x00")]
    response = await post_parts(client, [data])
    assert response.status_code == 200, response.text


def _deleted_files_open(pid: int) -> int:
    """Files the process holds open that have no name any more: its spooled temporary files on disk."""
    count = 0
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while listing
            count += os.readlink(descriptor).endswith("(deleted)")
    return count


async def test_a_client_that_disconnects_mid_body_is_audited_as_such_and_leaves_nothing(settings, services, tmp_path):
    size = 4 * 1024 * 1024  # over the 1 MiB a part is held in memory: half of it is on disk when the client goes
    instance = minimal_instance() + b"\x09\x00\x10\x10OB\x00\x00" + struct.pack("<L", size) + bytes(size)
    body, boundary = multipart([instance])
    log = tmp_path / "server.log"
    with running_server(settings, log) as (url, process):
        address = urlsplit(url)
        baseline = _deleted_files_open(process.pid)
        head = (
            f"POST /v2/studies HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Content-Type: {stow_headers(boundary)['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        with socket.create_connection((address.hostname, address.port)) as connection:
            connection.sendall(head.encode() + body[: len(body) // 2])
            wait_for(lambda: _deleted_files_open(process.pid) > baseline, "spooling the part to disk")
        wait_for(lambda: any(event["status"] == 499 for event in audit_events(log)), "the audit event")
        assert _deleted_files_open(process.pid) == baseline
        study = pydicom.dcmread(io.BytesIO(instance)).StudyInstanceUID
        assert await services.index.get_study("Microsoft.Default", study) is None
    [event] = audit_events(log)
    assert (event["operation"], event["status"], event["outcome"]) == ("store_instances", 499, "client-disconnected")
    text = log.read_text()
    assert "incident" not in text and "Traceback" not in text and " ERROR " not in text
    assert "the client closed the connection before sending the whole request body" in text
    stored = [f.path async for f in services.lake.list("")]
    assert [path for path in stored if services.layout.parse_instance_path(path)] == []  # no instance file


def _exchange(url: str, head: bytes) -> tuple[int, bytes]:
    """Send ``head`` (a request without a body) on a raw socket while reading the answer: (status, body)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port)) as connection:

        def send() -> None:
            with contextlib.suppress(OSError):  # the server may stop reading once it has answered
                connection.sendall(head)

        sender = threading.Thread(target=send)
        sender.start()
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        sender.join()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _request_head(url: str, headers: list[tuple[str, str]]) -> bytes:
    address = urlsplit(url)
    lines = [f"GET {address.path}/studies/1.2.3 HTTP/1.1", f"Host: {address.netloc}", "Connection: close"]
    return ("\r\n".join(lines + [f"{name}: {value}" for name, value in headers]) + "\r\n\r\n").encode()


def test_oversized_request_heads_get_a_431_naming_the_setting(settings, tmp_path):
    log = tmp_path / "server.log"
    with running_server(settings, log, {"DICOM_MAX_HEADER_BYTES": "16384"}) as (url, process):
        one_huge = [("X-Huge", "a" * 8 * 1024 * 1024)]
        many = [(f"X-Header-{number}", "value") for number in range(2000)]  # 2000 headers, about 36 KB
        for headers in (one_huge, many):
            status, body = _exchange(url, _request_head(url, headers))
            assert status == 431
            assert json.loads(body) == {
                "status": 431,
                "message": "the request line and header fields are over 16384 bytes (setting DICOM_MAX_HEADER_BYTES)",
            }
        under = [("X-Large", "a" * 12 * 1024)]
        assert _exchange(url, _request_head(url, under))[0] == 404  # served: study 1.2.3 is not stored
        assert process.poll() is None
    assert "Traceback" not in log.read_text()

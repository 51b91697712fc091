"""WADO-RS on every pydicom test file, against a real Azurite: bytes, transcoding, frames, metadata, bulk data."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import pack_bits

from dicom_core.dicom.frames import can_decode
from tests.dicom_files import preamble_zeroed, storable_test_files
from tests.retrieve_helpers import (
    EXPLICIT_LITTLE,
    bulk_data_uris,
    element_bytes,
    frame_count,
    instance_url,
    reference_json,
    split_multipart,
    store,
    stored_frames,
    without_bulk_data_uris,
)

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT = 'multipart/related; type="application/dicom"'
FRAMES_AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"  # as OHIF sends it
FRAMES_DECODED = f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LITTLE}'


def _reference_pixels(dataset: pydicom.Dataset) -> np.ndarray | None:
    """pydicom's pixels of the original, as the service's decoder gives them (None: pydicom cannot decode it)."""
    try:
        return dataset.pixel_array
    except Exception:
        return None


def _frame(array: np.ndarray, dataset: pydicom.Dataset, number: int) -> np.ndarray:
    return array[number - 1] if frame_count(dataset) > 1 else array


@pytest.mark.parametrize("path", storable_test_files(), ids=lambda path: path.name)
async def test_test_file_round_trips(client, path):
    data = path.read_bytes()
    await store(client, [data])
    dataset = pydicom.dcmread(path)
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    url = instance_url(data)

    # transfer-syntax=*: the stored bytes, and the part names the stored syntax.
    response = await client.get(url, headers={"Accept": AS_STORED})
    assert response.status_code == 200, response.text
    [(media_type, content)] = split_multipart(response)
    assert content == preamble_zeroed(data)
    assert media_type.parameters["transfer-syntax"] == syntax

    # Default: Explicit VR Little Endian, decoding to pydicom's pixels of the original.
    reference = _reference_pixels(dataset) if "PixelData" in dataset else None
    response = await client.get(url, headers={"Accept": DEFAULT})
    rewrites_pixels = (
        dataset.file_meta.TransferSyntaxUID.is_encapsulated or not dataset.file_meta.TransferSyntaxUID.is_little_endian
    )
    decodable = not dataset.file_meta.TransferSyntaxUID.is_encapsulated or can_decode(syntax)
    if "PixelData" in dataset and rewrites_pixels and (reference is None or not decodable):
        assert response.status_code == 406, response.text
    else:
        assert response.status_code == 200, response.text
        [(media_type, content)] = split_multipart(response)
        assert media_type.parameters["transfer-syntax"] == EXPLICIT_LITTLE
        transcoded = pydicom.dcmread(io.BytesIO(content))
        assert transcoded.file_meta.TransferSyntaxUID == EXPLICIT_LITTLE
        assert transcoded.SOPInstanceUID == dataset.SOPInstanceUID
        if reference is not None:
            assert np.array_equal(transcoded.pixel_array, reference)

    # Metadata: pydicom's JSON apart from bulk data references, each of which resolves to the right bytes.
    response = await client.get(f"{url}/metadata", headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    [model] = response.json()
    pixel_reference = model.pop("7FE00010", None)
    assert without_bulk_data_uris(model) == without_bulk_data_uris(reference_json(data))
    uris = bulk_data_uris(model) + ([pixel_reference["BulkDataURI"]] if pixel_reference else [])
    for uri in uris:
        assert uri.startswith(f"http://testserver{url}/bulkdata/")
        response = await client.get(uri, headers={"Accept": "application/octet-stream"})
        assert response.status_code == 200, (uri, response.text)
        segments = uri.split("/bulkdata/")[1].split("/")
        if segments == ["7FE00010"]:
            frames = stored_frames(dataset)
            expected = b"".join(frames) if dataset.file_meta.TransferSyntaxUID.is_encapsulated else dataset.PixelData
            assert response.content == expected[: len(response.content)]
            assert len(response.content) >= sum(len(frame) for frame in frames) - 1
        else:
            assert response.content == element_bytes(dataset, segments)

    if "PixelData" not in dataset:
        response = await client.get(f"{url}/frames/1", headers={"Accept": FRAMES_AS_STORED})
        assert response.status_code == 404
        return

    # Frames: the first and the last, as stored and decoded.
    count = frame_count(dataset)
    numbers = sorted({1, count})
    listing = ",".join(map(str, numbers))
    packed = int(dataset.BitsAllocated) == 1 or str(dataset.PhotometricInterpretation).startswith("YBR_FULL_422")
    response = await client.get(f"{url}/frames/{listing}", headers={"Accept": FRAMES_AS_STORED})
    assert response.status_code == 200, response.text
    parts = split_multipart(response)
    assert len(parts) == len(numbers)
    if not packed or dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        frames = stored_frames(dataset)
        for number, (media_type, content) in zip(numbers, parts, strict=True):
            assert media_type.type == "application/octet-stream"
            assert media_type.parameters["transfer-syntax"] == syntax
            assert content == frames[number - 1]

    if reference is None or not decodable:
        return
    response = await client.get(f"{url}/frames/{listing}", headers={"Accept": FRAMES_DECODED})
    assert response.status_code == 200, response.text
    native = dataset.file_meta.TransferSyntaxUID.is_little_endian and not dataset.file_meta.TransferSyntaxUID.is_encapsulated
    for number, (media_type, content) in zip(numbers, split_multipart(response), strict=True):
        assert media_type.parameters["transfer-syntax"] == EXPLICIT_LITTLE
        if native:  # native little-endian frames are already Explicit VR Little Endian frames
            assert packed or content == stored_frames(dataset)[number - 1]
            continue
        expected = _frame(reference, dataset, number)
        if int(dataset.BitsAllocated) == 1:
            assert content == bytes(pack_bits(expected))
            continue
        decoded = np.frombuffer(content, dtype=expected.dtype.newbyteorder("<")).reshape(expected.shape)
        assert np.array_equal(decoded, expected), f"frame {number}"

    # Rendered: a JPEG of the frame's size.
    response = await client.get(f"{url}/rendered")
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    assert image.size == (int(dataset.Columns), int(dataset.Rows))

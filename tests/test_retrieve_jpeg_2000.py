"""Transcoding to JPEG 2000 Lossless and HTJ2K Lossless against a real Azurite: pixel-exact, frame by frame."""

from __future__ import annotations

import io

import numpy as np
import openjpeg
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from dicom_core.dicom.transcode import HTJ2K_LOSSLESS, JPEG_2000_LOSSLESS
from tests.dicom_files import minimal_instance, storable_test_files
from tests.retrieve_helpers import EXPLICIT_LITTLE, frame_count, instance_url, split_multipart, store, uids

MEDIA_TYPES = {JPEG_2000_LOSSLESS: "image/jp2", HTJ2K_LOSSLESS: "image/jphc"}


def _instances(target: str) -> str:
    return f'multipart/related; type="application/dicom"; transfer-syntax={target}'


def _with_pixel_data() -> list:
    return [path for path in storable_test_files() if b"\xe0\x7f\x10\x00" in path.read_bytes()]


def _reference_pixels(dataset: pydicom.Dataset) -> np.ndarray | None:
    try:
        return dataset.pixel_array
    except Exception:
        return None


def _encodable(dataset: pydicom.Dataset, reference: np.ndarray | None) -> bool:
    """What the service encodes in JPEG 2000: 8- or 16-bit pixels it decodes."""
    return reference is not None and int(dataset.BitsAllocated) in (8, 16)


@pytest.mark.parametrize("path", _with_pixel_data(), ids=lambda path: path.name)
async def test_test_file_transcodes_pixel_exact(client, path):
    data = path.read_bytes()
    await store(client, [data])
    dataset = pydicom.dcmread(path)
    reference = _reference_pixels(dataset)
    url = instance_url(data)
    numbers = sorted({1, frame_count(dataset)})
    for target, media in MEDIA_TYPES.items():
        response = await client.get(url, headers={"Accept": _instances(target)})
        frames = await client.get(
            f"{url}/frames/{','.join(map(str, numbers))}",
            headers={"Accept": f"multipart/related; type={media}; transfer-syntax={target}"},
        )
        if str(dataset.file_meta.TransferSyntaxUID) == target:  # as stored
            assert response.status_code == frames.status_code == 200
            continue
        if not _encodable(dataset, reference):
            assert response.status_code == 406, (target, response.text)
            assert "ask for transfer-syntax=*" in response.json()["message"]
            if reference is not None:
                assert frames.status_code == 406 and "ask for transfer-syntax=*" in frames.json()["message"]
            continue
        assert response.status_code == 200, (target, response.text)
        [(media_type, content)] = split_multipart(response)
        assert media_type.parameters["transfer-syntax"] == target
        transcoded = pydicom.dcmread(io.BytesIO(content))
        assert transcoded.file_meta.TransferSyntaxUID == target
        assert transcoded.SOPInstanceUID == dataset.SOPInstanceUID
        assert np.array_equal(transcoded.pixel_array, reference)

        assert frames.status_code == 200, (target, frames.text)
        for number, (media_type, codestream) in zip(numbers, split_multipart(frames), strict=True):
            assert media_type.type == media and media_type.parameters["transfer-syntax"] == target
            expected = reference[number - 1] if frame_count(dataset) > 1 else reference
            assert np.array_equal(openjpeg.decode(codestream), expected), (target, number)


def _ct(frames: int, study: str, series: str) -> tuple[bytes, np.ndarray]:
    """A signed 16-bit multi-frame CT-like instance in Explicit VR Little Endian, and its pixels."""
    pixels = np.random.default_rng(frames).integers(-1024, 3072, (frames, 64, 64), dtype=np.int16)
    data = minimal_instance(
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        Rows=64,
        Columns=64,
        SamplesPerPixel=1,
        PhotometricInterpretation="MONOCHROME2",
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        PixelRepresentation=1,
        NumberOfFrames=frames,
        PixelData=pixels.tobytes(),
    )
    return data, pixels


async def test_a_hundred_frame_instance_frame_by_frame_and_whole(client):
    study, series = generate_uid(), generate_uid()
    data, pixels = _ct(100, study, series)
    report = minimal_instance(StudyInstanceUID=study, SeriesInstanceUID=series)  # no pixel data: sent as it is
    await store(client, [data, report])
    url = instance_url(data)
    listing = ",".join(str(number) for number in range(1, 101))
    for target, media in MEDIA_TYPES.items():
        response = await client.get(f"{url}/frames/{listing}", headers={"Accept": f"multipart/related; type={media}"})
        assert response.status_code == 200, response.text
        parts = split_multipart(response)
        assert len(parts) == 100
        for index, (media_type, codestream) in enumerate(parts):
            assert media_type.type == media and media_type.parameters["transfer-syntax"] == target
            assert np.array_equal(openjpeg.decode(codestream), pixels[index]), (target, index)

    # The whole instance, through the series (a viewer that decodes only JPEG 2000) and the study.
    for level, target in ((f"/v2/studies/{study}/series/{series}", JPEG_2000_LOSSLESS), (f"/v2/studies/{study}", HTJ2K_LOSSLESS)):
        response = await client.get(level, headers={"Accept": _instances(target)})
        assert response.status_code == 200, response.text
        parts = {
            pydicom.dcmread(io.BytesIO(content)).SOPInstanceUID: (media, content) for media, content in split_multipart(response)
        }
        other = pydicom.dcmread(io.BytesIO(parts[uids(report)[2]][1]))
        assert other.file_meta.TransferSyntaxUID == target and "PixelData" not in other
        media_type, content = parts[uids(data)[2]]
        assert media_type.parameters["transfer-syntax"] == target
        transcoded = pydicom.dcmread(io.BytesIO(content))
        assert transcoded.file_meta.TransferSyntaxUID == target
        assert len(list(generate_frames(transcoded.PixelData, number_of_frames=100))) == 100  # a fragment per frame
        assert np.array_equal(transcoded.pixel_array, pixels)

    response = await client.get(url, headers={"Accept": f"application/dicom; transfer-syntax={HTJ2K_LOSSLESS}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"application/dicom; transfer-syntax={HTJ2K_LOSSLESS}"
    assert np.array_equal(pydicom.dcmread(io.BytesIO(response.content)).pixel_array, pixels)


async def test_what_cannot_be_given_is_a_406_saying_what_to_ask_for(client):
    study, series = generate_uid(), generate_uid()
    data, _ = _ct(2, study, series)
    await store(client, [data])
    url = instance_url(data)
    response = await client.get(url, headers={"Accept": _instances("1.2.840.10008.1.2.4.91")})  # lossy: not offered
    assert response.status_code == 406
    offered = f"{EXPLICIT_LITTLE} or {JPEG_2000_LOSSLESS} or {HTJ2K_LOSSLESS}"
    assert f"ask for transfer-syntax=* (as stored) or {offered}" in response.json()["message"]
    lossy_frames = "multipart/related; type=image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    response = await client.get(f"{url}/frames/1", headers={"Accept": lossy_frames})
    assert response.status_code == 406
    assert f"transfer-syntax={JPEG_2000_LOSSLESS}" in response.json()["message"]

    # MPEG-2 video: the service has no decoder for it, so it can only be sent as stored.
    video = pydicom.dcmread(io.BytesIO(data))
    video.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    video.SOPInstanceUID = video.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    video.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60), b"\x00\x00\x01\xb3" + bytes(60)])
    video["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    video.save_as(buffer, enforce_file_format=True)
    await store(client, [buffer.getvalue()])
    for target in MEDIA_TYPES:
        response = await client.get(instance_url(buffer.getvalue()), headers={"Accept": _instances(target)})
        assert response.status_code == 406
        message = response.json()["message"]
        assert f"cannot decode to {target}; ask for transfer-syntax=* to get it as stored" in message

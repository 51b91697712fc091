"""Helpers of the WADO-RS tests: storing test data, splitting multipart answers, pydicom references."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
from pydicom.encaps import generate_frames

from dicom_core.http.media_types import MediaType
from tests.dicom_files import multipart, pydicom_json, stow_headers, uids

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


def instance_url(data: bytes, partition: str | None = None) -> str:
    study, series, sop, _ = uids(data)
    prefix = f"/v2/partitions/{partition}" if partition else "/v2"
    return f"{prefix}/studies/{study}/series/{series}/instances/{sop}"


async def store(client: httpx.AsyncClient, instances: list[bytes], partition: str | None = None) -> None:
    """Store ``instances`` with STOW-RS, ten per request; every one must be stored."""
    url = f"/v2/partitions/{partition}/studies" if partition else "/v2/studies"
    for start in range(0, len(instances), 10):
        body, boundary = multipart(instances[start : start + 10])
        response = await client.post(url, content=body, headers=stow_headers(boundary))
        assert response.status_code == 200, response.text


def by_partition(paths: list[Path]) -> dict[str, list[bytes]]:
    """Files grouped so that no partition holds two files with the same UIDs (one image in several syntaxes)."""
    groups: dict[str, list[bytes]] = {}
    seen: dict[tuple, int] = {}
    for path in paths:
        data = path.read_bytes()
        key = uids(data)[:3]
        seen[key] = seen.get(key, -1) + 1
        groups.setdefault(f"copy{seen[key]}", []).append(data)
    return groups


def split_multipart(response: httpx.Response) -> list[tuple[MediaType, bytes]]:
    """The parts of a multipart/related answer: each part's Content-Type and body."""
    media_type = MediaType.parse(response.headers["content-type"])
    assert media_type.type == "multipart/related", response.headers["content-type"]
    delimiter = f"--{media_type.parameters['boundary']}".encode()
    body = response.content
    assert body.endswith(delimiter + b"--\r\n")
    parts = []
    for raw in body.split(b"\r\n" + delimiter)[:-1]:
        raw = raw.removeprefix(delimiter).removeprefix(b"\r\n")
        head, _, content = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((MediaType.parse(headers["Content-Type"]), content))
    return parts


def frame_count(dataset: pydicom.Dataset) -> int:
    try:
        return int(dataset.get("NumberOfFrames", 1) or 1)
    except ValueError:
        return 1  # badVR.dcm: NumberOfFrames '1A'


def stored_frames(dataset: pydicom.Dataset) -> list[bytes]:
    """pydicom's frames as stored: fragment data of each frame, or native frame bytes."""
    count = frame_count(dataset)
    if dataset.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(dataset.PixelData, number_of_frames=count))
    length = int(dataset.Rows) * int(dataset.Columns) * int(dataset.SamplesPerPixel) * int(dataset.BitsAllocated) // 8
    return [dataset.PixelData[index * length : (index + 1) * length] for index in range(count)]


def reference_json(data: bytes) -> dict:
    """pydicom's DICOM JSON of the data set (no pixel data)."""
    return pydicom_json(io.BytesIO(data))


def bulk_data_uris(model: dict) -> list[str]:
    """Every BulkDataURI in a DICOM JSON object, sequences included."""
    found = []
    for attribute in model.values():
        if "BulkDataURI" in attribute:
            found.append(attribute["BulkDataURI"])
        for item in attribute.get("Value", []) if attribute.get("vr") == "SQ" else []:
            found += bulk_data_uris(item)
    return found


def without_bulk_data_uris(model: dict) -> dict:
    """The model with every BulkDataURI replaced by the placeholder ``bulk``."""
    copy = {}
    for tag, attribute in model.items():
        attribute = dict(attribute)
        if "BulkDataURI" in attribute:
            attribute["BulkDataURI"] = "bulk"
        if attribute.get("vr") == "SQ" and "Value" in attribute:
            attribute["Value"] = [without_bulk_data_uris(item) for item in attribute["Value"]]
        copy[tag] = attribute
    return copy


def element_bytes(dataset: pydicom.Dataset, path: list[str]) -> bytes:
    """The stored value of the element at a bulk data path (tag/item/tag...)."""
    current = dataset
    for position in range(0, len(path) - 1, 2):
        current = current[int(path[position], 16)].value[int(path[position + 1])]
    return bytes(current[int(path[-1], 16)].value)

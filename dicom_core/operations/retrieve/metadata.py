"""Metadata of a study, series or instance: DICOM JSON with absolute BulkDataURIs (PS3.18 10.4.1.1.2, Annex F)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import pydicom

from dicom_core.dicom.json_model import instance_json
from dicom_core.dicom.parse import pydicom_lock
from dicom_core.operations.file_header import read_header
from dicom_core.operations.retrieve.finding import find_instances
from dicom_core.operations.retrieve.reading import read
from dicom_core.operations.retrieve.streams import in_order
from dicom_core.services import Services
from dicom_core.storage.layout import Scope
from dicom_core.storage.records import InstanceRecord

_JSON_BATCH = 64 * 1024
PIXEL_DATA_KEY = "7FE00010"


@dataclass
class Metadata:
    """A metadata response: its ETag, known before the body, and the DICOM JSON array as a stream."""

    etag: str
    body: AsyncIterator[bytes]


async def retrieve_metadata(services: Services, target: Scope, base_url: str, *, original: bool = False) -> Metadata:
    """The DICOM JSON (PS3.18 Annex F) of the instances of ``target``, with absolute BulkDataURIs.

    One index read answers it. The ETag is a digest of the index entries (each
    changes when its instance is stored again) and of ``base_url``. With ``original``,
    an instance a bulk update changed is described as first received, from its original's header.
    """
    instances = await find_instances(services, target, metadata=True)
    digest = hashlib.sha256(f"{base_url}{' original' if original else ''}".encode())
    for instance in instances:
        digest.update(f"{instance.key.series}|{instance.key.sop}\0{instance.version}\0".encode())
    return Metadata(f'"{digest.hexdigest()[:40]}"', _metadata_body(services, instances, base_url, original))


def _instance_url(base_url: str, instance: InstanceRecord) -> str:
    key = instance.key
    return f"{base_url}/studies/{key.study}/series/{key.series}/instances/{key.sop}"


async def _metadata_body(
    services: Services, instances: list[InstanceRecord], base_url: str, original: bool
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()

    def instance_json_bytes(instance: InstanceRecord) -> Awaitable[bytes]:
        if original and instance.original_path is not None:
            return _metadata_from_file(services, instance, base_url, original=True)
        if instance.metadata_json:
            done = loop.create_future()
            done.set_result(_absolute(instance.metadata_json, _instance_url(base_url, instance)))
            return done
        return _metadata_from_file(services, instance, base_url)

    batch = bytearray(b"[")
    first = True
    async for model in in_order(instances, instance_json_bytes):
        if not first:
            batch += b","
        batch += model
        first = False
        if len(batch) >= _JSON_BATCH:
            yield bytes(batch)
            batch.clear()
    batch += b"]"
    yield bytes(batch)


def _absolute(model: bytes, instance_url: str) -> bytes:
    """Relative ``bulkdata/...`` URIs (json_model.py) made absolute under the instance's URL (PS3.18 F.2.6).

    The stored JSON is compact, so the key and its value's start are one exact byte
    string; a text value cannot contain it because JSON escapes its quotes.
    """
    return model.replace(b'"BulkDataURI":"bulkdata/', b'"BulkDataURI":"' + instance_url.encode() + b"/bulkdata/")


async def _metadata_from_file(services: Services, instance: InstanceRecord, base_url: str, *, original: bool = False) -> bytes:
    """The DICOM JSON of an instance whose metadata the index could not hold (over 64 KiB compressed), or of its original.

    An original's header is read (up to its Pixel Data, which it shares with the instance);
    otherwise the whole file.
    """
    if original:
        data = (await read_header(services.lake, instance.original_path or "")).data
    else:
        data = await read(services, instance)
    pixel_data = (instance.metadata or {}).get(PIXEL_DATA_KEY)

    def build() -> bytes:
        with pydicom_lock:
            dataset = pydicom.dcmread(io.BytesIO(data), defer_size=_JSON_BATCH)
            model = instance_json(dataset, None)
        described = model.get(PIXEL_DATA_KEY) or pixel_data
        if described is not None:  # always a reference, as at store time, however small
            model[PIXEL_DATA_KEY] = {"vr": described["vr"], "BulkDataURI": f"bulkdata/{PIXEL_DATA_KEY}"}
        return _absolute(json.dumps(model, separators=(",", ":")).encode(), _instance_url(base_url, instance))

    return await asyncio.to_thread(build)

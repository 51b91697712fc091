"""The local server started as the README starts it, driven by real clients over HTTP."""

from __future__ import annotations

import io
import os
import time
import uuid

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import preamble_zeroed, sample_path
from tests.server import audit_events, current_rss_bytes, peak_rss_bytes, running_server, wait_for


async def test_dicomweb_client_stores_ct_small_at_its_contract_path(settings, services, tmp_path):
    path = sample_path("CT_small.dcm")
    dataset = pydicom.dcmread(path)
    with running_server(settings, tmp_path / "server.log") as (url, _):
        client = DICOMwebClient(url)
        response = client.store_instances([dataset])
    referenced = response.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [dataset.SOPInstanceUID]
    assert referenced[0].RetrieveURL.startswith(url)
    key = InstanceKey("Microsoft.Default", dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID)
    stored = await services.lake.read(services.layout.instance_path(key))
    sent = io.BytesIO()
    dataset.save_as(sent, enforce_file_format=True)  # what dicomweb-client sends
    assert pydicom.dcmread(io.BytesIO(stored)).SOPInstanceUID == dataset.SOPInstanceUID
    assert stored[128:] == sent.getvalue()[128:]


def test_the_log_names_a_searchs_query_keys_and_never_their_values(settings, tmp_path):
    """At serve's default log level, as the README runs it: one audit event, and no patient ID or name (docs/security.md)."""
    log = tmp_path / "server.log"
    patient_id, family_name = f"MRN-{uuid.uuid4().hex[:12]}", f"Doe{uuid.uuid4().hex[:8]}"
    with running_server(settings, log, log_level="info") as (url, _):
        response = httpx.get(
            f"{url}/studies",
            params={"PatientID": patient_id, "PatientName": f"{family_name}^Jane"},
            headers={"Accept": "application/dicom+json"},
        )
        assert response.status_code == 200, response.text
        wait_for(lambda: audit_events(log), "the search's audit event")
    events = audit_events(log)
    assert [(event["operation"], event["queryKeys"]) for event in events] == [("search_studies", ["PatientID", "PatientName"])]
    text = log.read_text()
    assert patient_id not in text and family_name not in text


def _large_instance_template(pixel_bytes: int) -> tuple[bytes, bytes]:
    """A Part 10 file of about ``pixel_bytes`` of pixel data, and the placeholder SOP UID in it."""
    side = int((pixel_bytes // 2) ** 0.5)
    placeholder = "1.2.3.4." + "9" * 56  # 64 characters: any 64-character UID can replace it in place
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = placeholder
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = placeholder
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = "MEMORY"
    dataset.Modality = "OT"
    dataset.Rows = dataset.Columns = side
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.random.default_rng(1).integers(0, 4096, side * side, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), placeholder.encode()


@pytest.mark.slow
async def test_storing_a_1_gb_request_keeps_memory_bounded(settings, services, tmp_path):
    """Peak RSS of the server grows by a small fraction of a 1 GiB multipart body (docs/benchmark.md)."""
    template, placeholder = _large_instance_template(16 * 1024 * 1024)
    count = (1024**3) // len(template) + 1
    boundary = uuid.uuid4().hex
    sops = [f"1.2.3.4.{n:056d}" for n in range(count)]

    def body():
        for sop in sops:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            yield template.replace(placeholder, sop.encode())
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    with running_server(settings, tmp_path / "server.log") as (url, process):
        # Warm up: the first store imports and connects everything once.
        warm = template.replace(placeholder, b"1.2.3.5." + b"1" * 56)
        httpx.post(f"{url}/studies", content=warm, headers={"Content-Type": "application/dicom"}, timeout=60)
        before = current_rss_bytes(process.pid)
        started = time.perf_counter()
        response = httpx.post(f"{url}/studies", content=body(), headers=headers, timeout=600)
        elapsed = time.perf_counter() - started
        peak = peak_rss_bytes(process.pid)
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["00081199"]["Value"]) == count
    sent = count * len(template)
    growth = peak - before
    report = (
        f"stored {sent / 1024**3:.2f} GiB in {count} instances in {elapsed:.1f} s; server RSS before "
        f"{before / 1024**2:.0f} MiB, peak {peak / 1024**2:.0f} MiB, growth {growth / 1024**2:.0f} MiB "
        f"({100 * growth / sent:.1f}% of the body)"
    )
    print(report)
    (tmp_path.parent / "memory-report.txt").write_text(report)
    artifacts = os.environ.get("TEST_ARTIFACTS")
    if artifacts:
        os.makedirs(artifacts, exist_ok=True)
        with open(os.path.join(artifacts, "stow-memory.txt"), "w") as handle:
            handle.write(report + "\n")
    assert growth < 0.10 * sent
    key = InstanceKey("Microsoft.Default", pydicom.dcmread(io.BytesIO(template)).StudyInstanceUID, "", "")
    del key
    last = template.replace(placeholder, sops[-1].encode())
    dataset = pydicom.dcmread(io.BytesIO(last), stop_before_pixels=True)
    stored = await services.lake.read(
        services.layout.instance_path(
            InstanceKey("Microsoft.Default", dataset.StudyInstanceUID, dataset.SeriesInstanceUID, sops[-1])
        )
    )
    assert stored == preamble_zeroed(last)

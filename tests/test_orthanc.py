"""Orthanc's DICOMweb client against the service: the calls a user makes once ``DicomWeb.Servers`` names it.

The service runs as the README starts it (``python -m dicom_core serve`` over the test Azurite); Debian's
Orthanc with its DICOMweb plugin (installed by ``scripts/setup.sh --test``) runs with bench/orthanc.py's
configuration plus the service as DICOMweb server ``lake``, as docs/clients.md configures it.
Files are uploaded into one Orthanc and sent with ``/dicom-web/servers/lake/stow``, found with ``.../get``,
pulled into a second, empty Orthanc with ``.../retrieve`` and removed with ``.../delete``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from bench import orthanc
from dicom_core.settings import Settings
from tests.dicom_files import new_instance
from tests.server import running_server

SERVER = "lake"
MISSING = (
    "Orthanc or its DICOMweb plugin is missing: run `bash scripts/setup.sh --test` as root "
    "(it installs Debian's orthanc and orthanc-dicomweb)"
)
TIMEOUT = 60.0


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The service's DICOMweb root (``.../v2``), the URL Orthanc's users configure."""
    with running_server(settings, tmp_path / "server.log") as (url, _):
        yield url


@contextmanager
def peer(data: Path, service: str) -> Iterator[str]:
    """An Orthanc that knows the service as DICOMweb server ``lake``, deletes allowed; yields its REST root."""
    assert orthanc.is_installed(), MISSING
    with orthanc.running(data, {SERVER: {"Url": service, "HasDelete": True}}) as server:
        yield orthanc.rest_root(server)


def call(root: str, action: str, body: dict) -> httpx.Response:
    """POST one of the plugin's calls on server ``lake`` (``stow``, ``get``, ``retrieve``, ``delete``)."""
    response = httpx.post(f"{root}/dicom-web/servers/{SERVER}/{action}", json=body, timeout=TIMEOUT)
    # Orthanc answers 500 whatever the service refused; server.log in the test's tmp_path has its status.
    assert response.status_code == 200, f"Orthanc's {action}: {response.text}"
    return response


def upload(root: str, data: bytes) -> str:
    """Store a Part 10 file in Orthanc; its Orthanc identifier."""
    response = httpx.post(f"{root}/instances", content=data, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["ID"]


def find(root: str, uri: str, **arguments: str) -> list[dict]:
    """A QIDO-RS search of the service through Orthanc's ``get`` call."""
    return call(root, "get", {"Uri": uri, "Arguments": arguments}).json()


def held_by(root: str) -> dict[str, pydicom.Dataset]:
    """Every instance an Orthanc holds, by SOP Instance UID, read back from its files."""
    instances = httpx.get(f"{root}/instances", timeout=TIMEOUT).json()
    datasets = [pydicom.dcmread(io.BytesIO(httpx.get(f"{root}/instances/{i}/file", timeout=TIMEOUT).content)) for i in instances]
    return {str(dataset.SOPInstanceUID): dataset for dataset in datasets}


def values(matches: list[dict], tag: str) -> list[str]:
    return [match[tag]["Value"][0] for match in matches]


def a_study(patient_id: str) -> tuple[str, list[bytes]]:
    """A study of two series: two CT slices and one MR image (pydicom's test files with new UIDs)."""
    study, ct, mr = generate_uid(), generate_uid(), generate_uid()
    files = [new_instance(study=study, series=ct, patient_id=patient_id) for _ in range(2)]
    files.append(new_instance(study=study, series=mr, patient_id=patient_id, modality="MR", template="MR_small.dcm"))
    return study, files


def test_stow_qido_and_wado_rs_between_two_orthancs(service: str, tmp_path: Path) -> None:
    study, files = a_study("ORTHANC-1")
    sent = {str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID): pydicom.dcmread(io.BytesIO(data)) for data in files}
    with peer(tmp_path / "sender", service) as sender, peer(tmp_path / "receiver", service) as receiver:
        stored = call(sender, "stow", {"Resources": [upload(sender, data) for data in files]}).json()
        assert int(stored["InstancesCount"]) == 3

        # The service itself holds them: Orthanc's STOW succeeding is not taken on trust.
        direct = httpx.get(f"{service}/studies/{study}/instances", headers={"Accept": "application/dicom+json"})
        assert sorted(values(direct.json(), "00080018")) == sorted(sent)

        [match] = find(sender, "/studies", PatientID="ORTHANC-1")
        assert values([match], "0020000D") == [study]
        assert values([match], "00201208") == [3]  # NumberOfStudyRelatedInstances
        assert sorted(values(find(sender, f"/studies/{study}/series"), "00080060")) == ["CT", "MR"]

        assert held_by(receiver) == {}
        received = call(receiver, "retrieve", {"Resources": [{"Study": study}]}).json()
        assert int(received["ReceivedInstancesCount"]) == 3
        arrived = held_by(receiver)
        assert sorted(arrived) == sorted(sent)
        for sop, dataset in arrived.items():
            assert dataset.StudyInstanceUID == study
            assert dataset.PixelData == sent[sop].PixelData


def test_delete_series_and_study_through_orthanc(service: str, tmp_path: Path) -> None:
    study, files = a_study("ORTHANC-2")
    series = {pydicom.dcmread(io.BytesIO(data)).Modality: pydicom.dcmread(io.BytesIO(data)).SeriesInstanceUID for data in files}
    with peer(tmp_path / "sender", service) as sender:
        call(sender, "stow", {"Resources": [upload(sender, data) for data in files]})
        assert len(find(sender, f"/studies/{study}/instances")) == 3

        call(sender, "delete", {"Level": "Series", "StudyInstanceUID": study, "SeriesInstanceUID": series["MR"]})
        assert values(find(sender, f"/studies/{study}/series"), "0020000E") == [series["CT"]]

        call(sender, "delete", {"Level": "Study", "StudyInstanceUID": study})
        assert find(sender, "/studies", PatientID="ORTHANC-2") == []
    gone = httpx.get(f"{service}/studies/{study}", headers={"Accept": "multipart/related; type=application/dicom"})
    assert gone.status_code == 404

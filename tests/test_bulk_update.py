"""Bulk update (POST /v2/studies/$bulkUpdate) on Azurite: the corrected values everywhere, the originals kept.

The operations worker runs the update (``run_operations``, what the timer and the local
server's background task call). What a client sees is read through the API; what the lake
holds is read with the service's own lake adapter; the analytics tables with deltalake.
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_core.dicom.update import UPDATABLE
from dicom_core.events import run_operations
from dicom_core.operations.analytics import open_tables, sync
from dicom_core.operations.check import check
from dicom_core.operations.reconcile import contract_files, reindex
from dicom_core.services import Services
from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import minimal_instance, multipart, new_instance, preamble_zeroed, stow_headers
from tests.operations_crash import kill_operations_worker
from tests.server import running_server
from tests.test_analytics import read, rows_by_sop
from tests.test_export import lake_file
from tests.test_extended_query_tags import add_tags, operation
from tests.test_search import store

DEFAULT = "Microsoft.Default"
RIGHT = {"00100020": {"vr": "LO", "Value": ["RIGHT-7"]}, "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Right^Patient"}]}}
FRAMES = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}


def dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def keys_of(data: bytes) -> tuple[str, str, str]:
    parsed = dataset(data)
    return str(parsed.StudyInstanceUID), str(parsed.SeriesInstanceUID), str(parsed.SOPInstanceUID)


def instance_url(data: bytes) -> str:
    study, series, sop = keys_of(data)
    return f"/v2/studies/{study}/series/{series}/instances/{sop}"


async def start(client, studies: list[str], change: dict, prefix: str = "/v2"):
    return await client.post(f"{prefix}/studies/$bulkUpdate", json={"studyInstanceUids": studies, "changeDataset": change})


async def updated(client, services: Services, studies: list[str], change: dict = RIGHT) -> dict:
    response = await start(client, studies, change)
    assert response.status_code == 202, response.text
    assert await run_operations(services, owner="updater") == 1
    return await operation(client, response.json()["id"])


async def instance_file(client, data: bytes, original: bool = False) -> bytes:
    headers = {"Accept": "application/dicom; transfer-syntax=*"} | ({"msdicom-request-original": "true"} if original else {})
    response = await client.get(instance_url(data), headers=headers)
    assert response.status_code == 200, response.text
    # An original's size is not the current file's: a Content-Length, when sent, is of the body sent.
    assert response.headers.get("content-length", str(len(response.content))) == str(len(response.content))
    return response.content


async def frame(client, data: bytes, number: int) -> bytes:
    """The bytes of one frame, as stored (the one part of a multipart answer)."""
    response = await client.get(f"{instance_url(data)}/frames/{number}", headers=FRAMES)
    assert response.status_code == 200, response.text
    return response.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]


def two_studies() -> tuple[list[bytes], list[bytes], bytes]:
    """Study A (two series, 3 instances), study B (one multi-frame instance), study C of the same patient, untouched."""
    wrong = {"patient_id": "WRONG", "PatientName": "Wrong^Patient"}
    study_a, series_a = generate_uid(), generate_uid()
    a = [new_instance(study=study_a, series=series_a, **wrong) for _ in range(2)]
    a.append(new_instance(study=study_a, modality="MR", template="MR_small.dcm", **wrong))
    b = [new_instance(template="emri_small.dcm", **wrong)]  # 10 frames
    return a, b, new_instance(**wrong)


async def test_two_studies_show_the_corrected_patient_everywhere_and_keep_their_originals(client, services):
    a, b, c = two_studies()
    await store(client, [*a, *b, c])
    await sync(services)
    study_a, study_b = keys_of(a[0])[0], keys_of(b[0])[0]
    metadata_before = await client.get(f"/v2/studies/{study_a}/metadata")
    frames_before = [await frame(client, b[0], n) for n in (1, 10)]
    feed_before = (await client.get("/v2/changefeed/latest")).json()["Sequence"]

    response = await start(client, [study_a, study_b], RIGHT)
    assert response.status_code == 202, response.text
    assert response.json()["href"] == f"http://testserver/v2/operations/{response.json()['id']}"
    assert (await operation(client, response.json()["id"]))["status"] == "notStarted"
    assert await run_operations(services, owner="updater") == 1
    done = await operation(client, response.json()["id"])
    assert (done["status"], done["type"], done["percentComplete"]) == ("completed", "update", 100)
    expected = {"studyProcessed": 2, "studyUpdated": 2, "studyFailed": 0, "instanceUpdated": 4, "errors": []}
    assert done["results"] == expected

    # Searches find both studies under the corrected patient, and only the untouched one under the old.
    found = (await client.get("/v2/studies", params={"PatientID": "RIGHT-7"})).json()
    assert {match["0020000D"]["Value"][0] for match in found} == {study_a, study_b}
    assert [match["00100010"]["Value"][0]["Alphabetic"] for match in found] == ["Right^Patient"] * 2
    assert [m["0020000D"]["Value"][0] for m in (await client.get("/v2/studies", params={"PatientID": "WRONG"})).json()] == [
        keys_of(c)[0]
    ]
    assert len((await client.get("/v2/instances", params={"PatientName": "Right^Patient"})).json()) == 4

    # Metadata has the new values and a new ETag; the files (API and lake alike) too, pixels untouched.
    metadata = await client.get(f"/v2/studies/{study_a}/metadata")
    assert metadata.headers["etag"] != metadata_before.headers["etag"]
    assert {instance["00100020"]["Value"][0] for instance in metadata.json()} == {"RIGHT-7"}
    for sent in [*a, *b]:
        served = await instance_file(client, sent)
        assert served == await lake_file(services, *keys_of(sent))
        now, then = dataset(served), dataset(sent)
        assert (now.PatientID, str(now.PatientName)) == ("RIGHT-7", "Right^Patient")
        assert now.PixelData == then.PixelData and now.SOPInstanceUID == then.SOPInstanceUID
        # The original as received, for audit: file and metadata.
        assert await instance_file(client, sent, original=True) == preamble_zeroed(sent)
        original = await client.get(f"{instance_url(sent)}/metadata", headers={"msdicom-request-original": "true"})
        assert original.json()[0]["00100020"]["Value"] == ["WRONG"]
        assert original.json()[0]["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    # Frames are read at their new offsets: the same bytes as before.
    assert [await frame(client, b[0], n) for n in (1, 10)] == frames_before

    # One change-feed entry per instance, each an update.
    feed = (await client.get("/v2/changefeed", params={"startTime": "2000-01-01T00:00:00Z", "limit": 200})).json()
    new = [entry for entry in feed if entry["Sequence"] > feed_before]
    assert sorted(entry["SopInstanceUid"] for entry in new) == sorted(keys_of(sent)[2] for sent in [*a, *b])
    assert {(entry["Action"], entry["State"]) for entry in new} == {("update", "current")}

    # The analytics tables follow the feed.
    await sync(services)
    instances = rows_by_sop(read(await open_tables(services), "instances"))
    assert {instances[keys_of(sent)[2]]["patientId"] for sent in [*a, *b]} == {"RIGHT-7"}
    assert instances[keys_of(c)[2]]["patientId"] == "WRONG"

    # The originals live outside the partitions: never taken for instances, the archive consistent.
    originals = [file async for file in services.lake.list(f"{services.layout.root}originals/")]
    assert sorted(file.path for file in originals) == sorted(
        services.layout.original_path(InstanceKey(DEFAULT, *keys_of(sent))) for sent in [*a, *b]
    )
    assert await check(services) == []
    summary = await reindex(services, await contract_files(services))
    assert summary.counts["added"] == summary.counts["refreshed"] == summary.counts["removed"] == 0

    # An instance whose file is removed outside the API: the checker reports its original, reindex removes it.
    gone = InstanceKey(DEFAULT, *keys_of(a[2]))
    await services.lake.delete(services.layout.instance_path(gone))
    stray = services.layout.original_path(InstanceKey(DEFAULT, study_a, "1.2.3", "1.2.3.4"))
    await services.lake.write(stray, io.BytesIO(a[0]), len(a[0]), overwrite=False)
    problems = [str(violation) for violation in await check(services)]
    assert f"[7] {stray}: an original of an instance that is not stored" in problems
    summary = await reindex(services, await contract_files(services))
    assert (summary.counts["removed"], summary.originals_removed) == (1, 2)
    assert await check(services) == []

    # DELETE removes the originals of what it deletes, and only those.
    assert (await client.delete(f"/v2/studies/{study_a}")).status_code == 204
    left = [file.path async for file in services.lake.list(f"{services.layout.root}originals/")]
    assert left == [services.layout.original_path(InstanceKey(DEFAULT, *keys_of(b[0])))]


def large_multiframe(frames: int = 100, rows: int = 128, columns: int = 128) -> bytes:
    """A 16-bit native multi-frame instance of ``frames`` frames, each frame's pixels distinct."""
    pixels = np.arange(frames * rows * columns, dtype=np.uint16).reshape(frames, rows, columns)
    return minimal_instance(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.7.3", PatientName="Wrong^Patient", Rows=rows, Columns=columns,
        NumberOfFrames=str(frames), SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16,
        BitsStored=16, HighBit=15, PixelRepresentation=0, PixelData=pixels.tobytes(),
    )  # fmt: skip


async def test_pixel_data_never_passes_through_the_service(client, services):
    data = large_multiframe()
    await store(client, [data])
    size = len(data)
    assert size > 3_000_000
    response = await start(client, [keys_of(data)[0]], RIGHT)
    services.statistics.reset()
    assert await run_operations(services, owner="updater") == 1
    assert (await operation(client, response.json()["id"]))["status"] == "completed"
    # The header's ranged read is all the service read of the file; copy and tail are server-side.
    assert services.statistics.lake_bytes_read < 80_000
    served = dataset(await instance_file(client, data))
    assert served.PatientID == "RIGHT-7" and served.PixelData == dataset(data).PixelData
    assert await frame(client, data, 100) == dataset(data).pixel_array[99].tobytes()


REFUSALS = [
    ({"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}, "(0020,000D) StudyInstanceUID cannot be updated"),
    ({"7FE00010": {"vr": "OW", "InlineBinary": ""}}, "(7FE0,0010) PixelData cannot be updated"),
    ({"00101002": {"vr": "SQ", "Value": []}}, "(0010,1002) OtherPatientIDsSequence cannot be updated"),
    ({"00091001": {"vr": "LO", "Value": ["x"]}}, "(0009,1001) cannot be updated"),
    ({"00080060": {"vr": "CS", "Value": ["MR"]}}, "(0008,0060) Modality cannot be updated"),
    ({"PatientID": {"vr": "LO", "Value": ["x"]}}, "'PatientID' is not a tag of 8 hexadecimal digits"),
    ({"00100020": {"vr": "SH", "Value": ["x"]}}, '(0010,0020) PatientID must be a DICOM JSON element with "vr": "LO"'),
    ({"00100020": {"vr": "LO"}}, "(0010,0020) PatientID has no value"),
    ({"00100030": {"vr": "DA", "Value": ["1970-01-01"]}}, "(0010,0030) PatientBirthDate: Invalid value for VR DA"),
    ({"00100020": {"vr": "LO", "Value": ["x" * 65]}}, "(0010,0020) PatientID: "),
    ({}, "changeDataset must be a non-empty DICOM JSON object"),
]


@pytest.mark.parametrize(("change", "message"), REFUSALS, ids=[message[:28] for _, message in REFUSALS])
async def test_a_change_outside_what_may_be_updated_is_refused_and_nothing_changes(client, services, change, message):
    data = new_instance(patient_id="WRONG")
    await store(client, [data])
    response = await start(client, [keys_of(data)[0]], RIGHT | change if change else change)
    assert response.status_code == 400 and message in response.json()["message"], response.text
    assert await run_operations(services, owner="updater") == 0  # no operation was started
    assert dataset(await instance_file(client, data)).PatientID == "WRONG"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"studyInstanceUids": [f"1.2.{n}" for n in range(51)], "changeDataset": RIGHT}, "has 51 studies; one bulk update"),
        ({"studyInstanceUids": ["1.2.x"], "changeDataset": RIGHT}, "studyInstanceUids[0] '1.2.x' is not a UID"),
        ({"studyInstanceUids": [], "changeDataset": RIGHT}, "studyInstanceUids must be a non-empty array"),
        ({"studyInstanceUids": ["1.2.3"]}, "the body has no changeDataset"),
        ({"studyInstanceUids": ["1.2.3"], "changeDataset": RIGHT, "x": 1}, "unknown field 'x'"),
    ],
)
async def test_a_malformed_request_is_refused(client, services, body, message):
    response = await client.post("/v2/studies/$bulkUpdate", json=body)
    assert response.status_code == 400 and message in response.json()["message"], response.text
    assert await run_operations(services, owner="updater") == 0


async def test_every_updatable_attribute_takes_a_value_of_its_vr(client, services):
    """One request changes every attribute Azure allows; each file and each metadata answer holds it after."""
    samples = {"PN": {"Alphabetic": "New^Name"}, "DA": "19700101", "TM": "101010", "AS": "042Y", "DS": 1.5, "CS": "O"}
    samples |= {"SQ": None, "LO": "new", "SH": "new", "LT": "new", "UC": "new", "ST": "new", "UT": "new"}
    change = {}
    for tag in UPDATABLE:
        vr = pydicom.datadict.dictionary_VR(tag)
        change[f"{tag:08X}"] = {"vr": vr, "Value": [samples[vr]]}
    data = new_instance(patient_id="WRONG")
    await store(client, [data])
    assert (await updated(client, services, [keys_of(data)[0]], change))["status"] == "completed"
    model = (await client.get(f"{instance_url(data)}/metadata")).json()[0]
    served = dataset(await instance_file(client, data))
    for tag in UPDATABLE:
        assert model[f"{tag:08X}"]["Value"] == change[f"{tag:08X}"]["Value"], pydicom.datadict.keyword_for_tag(tag)
        assert served[tag].value not in (None, "")


async def test_a_value_outside_the_character_set_switches_the_instance_to_utf8(client, services):
    data = new_instance(patient_id="WRONG", SpecificCharacterSet="ISO_IR 100", StudyDescription="Tête")
    await store(client, [data])
    change = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ωmega^Zoë"}]}}
    assert (await updated(client, services, [keys_of(data)[0]], change))["status"] == "completed"
    served = dataset(await instance_file(client, data))
    assert (served.SpecificCharacterSet, str(served.PatientName), served.StudyDescription) == ("ISO_IR 192", "Ωmega^Zoë", "Tête")
    found = (await client.get("/v2/studies", params={"PatientName": "Ωmega^Zoë"})).json()
    assert [match["00080005"]["Value"] for match in found] == [["ISO_IR 192"]]


async def test_a_second_update_keeps_the_first_original_and_a_missing_study_fails_the_operation(client, services):
    data = new_instance(patient_id="WRONG")
    await store(client, [data])
    study = keys_of(data)[0]
    assert (await updated(client, services, [study]))["status"] == "completed"
    second = await updated(client, services, [study, "1.2.3.999"], {"00100020": {"vr": "LO", "Value": ["THIRD"]}})
    assert second["status"] == "failed"
    assert second["results"] | {"errors": []} == {
        "studyProcessed": 2, "studyUpdated": 1, "studyFailed": 1, "instanceUpdated": 1, "errors": [],
    }  # fmt: skip
    assert second["results"]["errors"] == ["study 1.2.3.999 is not stored"]
    assert "1 of 2 studies were not updated whole: study 1.2.3.999 is not stored" in second["errors"][0]
    assert dataset(await instance_file(client, data)).PatientID == "THIRD"
    assert await instance_file(client, data, original=True) == preamble_zeroed(data)


async def test_an_instance_with_the_old_values_stored_after_an_update_is_found_by_them(client, services):
    # The update removed the study's lookup entries of the old values; a late instance that still
    # carries them must write them again, though the study's entity once had them.
    data = new_instance(patient_id="WRONG")
    await store(client, [data])
    study, series, _ = keys_of(data)
    assert (await updated(client, services, [study]))["status"] == "completed"
    assert (await client.get("/v2/studies", params={"PatientID": "WRONG"})).json() == []
    await store(client, [new_instance(study=study, series=series, patient_id="WRONG")])
    found = (await client.get("/v2/studies", params={"PatientID": "WRONG"})).json()
    assert [match["0020000D"]["Value"][0] for match in found] == [study]


async def test_a_study_being_updated_cannot_be_updated_by_a_second_request(client, services):
    data = new_instance()
    await store(client, [data])
    first = await start(client, [keys_of(data)[0]], RIGHT)
    assert first.status_code == 202
    second = await start(client, ["1.2.3", keys_of(data)[0]], RIGHT, prefix="/v2")
    assert second.status_code == 409 and first.json()["id"] in second.json()["message"]
    assert await run_operations(services, owner="updater") == 1
    assert (await start(client, [keys_of(data)[0]], RIGHT)).status_code == 202  # once it finished


async def test_an_extended_query_tag_follows_the_new_value(client, services):
    data = new_instance(PatientAge="040Y", PatientWeight="70")
    await store(client, [data])
    await add_tags(client, [{"path": "PatientAge", "level": "Study"}, {"path": "PatientWeight", "level": "Instance"}])
    assert await run_operations(services, owner="reindexer") == 1
    change = {"00101010": {"vr": "AS", "Value": ["041Y"]}, "00101030": {"vr": "DS", "Value": [71.5]}}
    assert (await updated(client, services, [keys_of(data)[0]], change))["status"] == "completed"
    assert len((await client.get("/v2/studies", params={"PatientAge": "041Y"})).json()) == 1
    assert (await client.get("/v2/studies", params={"PatientAge": "040Y"})).json() == []
    assert len((await client.get("/v2/instances", params={"PatientWeight": "71.5"})).json()) == 1
    assert (await client.get("/v2/instances", params={"PatientWeight": "70"})).json() == []


async def test_in_a_partition(client, services):
    data = new_instance(patient_id="WRONG")
    await store(client, [data], url="/v2/partitions/ward7/studies")
    study = keys_of(data)[0]
    response = await start(client, [study], RIGHT, prefix="/v2/partitions/ward7")
    assert response.status_code == 202
    await run_operations(services, owner="updater")
    done = await operation(client, response.json()["id"])
    assert done["resources"] == [f"http://testserver/v2/partitions/ward7/studies/{study}"]
    found = (await client.get("/v2/partitions/ward7/studies", params={"PatientID": "RIGHT-7"})).json()
    assert [match["0020000D"]["Value"][0] for match in found] == [study]
    assert (await client.get("/v2/studies", params={"PatientID": "RIGHT-7"})).json() == []


async def test_a_request_for_the_original_of_an_instance_never_updated_gets_the_instance(client):
    data = new_instance()
    await store(client, [data])
    assert await instance_file(client, data, original=True) == preamble_zeroed(data)
    refused = await client.get(instance_url(data), headers={"msdicom-request-original": "yes"})
    assert refused.status_code == 400 and "msdicom-request-original must be true or false" in refused.json()["message"]


# -- an update killed for real (SIGKILL of the worker process) resumes and finishes --------------------------

KILL_POINTS = [
    "Lake.copy:3",  # originals of two instances kept, the third not yet
    "Lake.splice:2",  # one file rewritten and indexed, the second's original kept but not rewritten
    "Index.replace_instances:1",  # every file rewritten, no index entry: each found by the version it replaced
    "ChangeFeedStore.append:1",  # every file and entry rewritten, nothing announced
    "Index.add_attributes:1",  # the study's instances done, the study entity not
]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
async def test_an_update_killed_mid_way_resumes_and_leaves_every_instance_updated_once(client, services, settings, kill_at):
    study = generate_uid()
    instances = [new_instance(patient_id="WRONG", study=study)]
    instances += [new_instance(patient_id="WRONG", study=study, template="emri_small.dcm") for _ in range(3)]
    await store(client, instances)
    feed_before = (await client.get("/v2/changefeed/latest")).json()["Sequence"]
    response = await start(client, [study], RIGHT)
    assert response.status_code == 202
    kill_operations_worker(settings, kill_at)
    assert await run_operations(services, owner="survivor") == 1
    done = await operation(client, response.json()["id"])
    assert done["status"] == "completed" and done["results"]["instanceUpdated"] == 4, done
    for sent in instances:
        assert dataset(await instance_file(client, sent)).PatientID == "RIGHT-7"
        assert await instance_file(client, sent, original=True) == preamble_zeroed(sent)
    found = (await client.get("/v2/studies", params={"PatientID": "RIGHT-7"})).json()
    assert [match["0020000D"]["Value"][0] for match in found] == [study]
    feed = (await client.get("/v2/changefeed", params={"startTime": "2000-01-01T00:00:00Z", "limit": 200})).json()
    new = [entry for entry in feed if entry["Sequence"] > feed_before]
    assert sorted(entry["SopInstanceUid"] for entry in new) == sorted(keys_of(sent)[2] for sent in instances)
    assert await check(services) == []


def test_the_running_server_updates_in_the_background_and_serves_the_original(settings, tmp_path):
    """The PACS administrator's story against ``python -m dicom_core serve``: its own worker runs the update."""
    study = generate_uid()
    parts = [new_instance(patient_id="WRONG", study=study) for _ in range(2)]
    body, boundary = multipart(parts)
    with running_server(settings, tmp_path / "server.log", {"DICOM_OPERATION_POLL_SECONDS": "1"}) as (url, _):
        assert httpx.post(f"{url}/studies", content=body, headers=stow_headers(boundary), timeout=60).status_code == 200
        started = httpx.post(f"{url}/studies/$bulkUpdate", json={"studyInstanceUids": [study], "changeDataset": RIGHT})
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 120
        while (state := httpx.get(started.json()["href"]).json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        assert state["results"]["instanceUpdated"] == 2, (state["status"], state["results"])
        found = httpx.get(f"{url}/studies", params={"PatientID": "RIGHT-7"}).json()
        assert [match["0020000D"]["Value"][0] for match in found] == [study]
        headers = {"Accept": "application/dicom; transfer-syntax=*"}
        current = httpx.get(f"{url}{instance_url(parts[0]).removeprefix('/v2')}", headers=headers)
        original = httpx.get(
            f"{url}{instance_url(parts[0]).removeprefix('/v2')}", headers=headers | {"msdicom-request-original": "true"}
        )
    assert dataset(current.content).PatientID == "RIGHT-7"
    assert original.content == preamble_zeroed(parts[0])

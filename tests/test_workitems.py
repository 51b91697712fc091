"""UPS-RS workitems (PS3.18 11) on Azurite, through the app and the production adapters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_core.dicom.workitem import (
    KEYS_BY_NAME,
    MAX_WORKITEM_BYTES,
    WorkitemProblem,
    check_create,
    parse_dataset,
)
from dicom_core.storage.workitems import index_values
from tests.server import docs_example, run_script, running_server

JSON = {"Content-Type": "application/dicom+json", "Accept": "application/dicom+json"}


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def code(value: str, meaning: str = "") -> dict:
    return {
        "00080100": {"vr": "SH", "Value": [value]},
        "00080102": {"vr": "SH", "Value": ["99LAKE"]},
        "00080104": {"vr": "LO", "Value": [meaning or value]},
    }


def workitem(
    *,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    label: str = "AI",
    station: str = "GPU-POOL-1",
    task: str = "NODULE",
    start: str = "20261201090000",
    readiness: str = "READY",
    **extra: dict,
) -> dict:
    """A workitem that meets PS3.4 Table CC.2.5-3 (N-CREATE): run nodule detection on a study."""
    dataset = {
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["Nodule detection"]},
        "00741202": {"vr": "LO", "Value": [label]},
        "00404025": {"vr": "SQ", "Value": [code(station)]},
        "00404026": {"vr": "SQ", "Value": []},
        "00404027": {"vr": "SQ", "Value": []},
        "00404005": {"vr": "DT", "Value": [start]},
        "00404018": {"vr": "SQ", "Value": [code(task, "Nodule detection")]},
        "00404041": {"vr": "CS", "Value": [readiness]},
        "00404021": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": ["1.2.3.4"]}}]},
        "00741210": {"vr": "SQ", "Value": []},
        "00400400": {"vr": "LT"},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": patient_name}]},
        "00100020": {"vr": "LO", "Value": [patient_id]},
        "00101002": {"vr": "SQ", "Value": []},
        "00100030": {"vr": "DA"},
        "00100040": {"vr": "CS", "Value": ["F"]},
        "00380010": {"vr": "LO"},
        "00380014": {"vr": "SQ", "Value": []},
        "00081080": {"vr": "LO"},
        "00081084": {"vr": "SQ", "Value": []},
        "0040A370": {"vr": "SQ", "Value": []},
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00081195": {"vr": "UI"},  # type 2 in Table CC.2.5-3, and empty: nobody owns a new workitem
    }
    return dataset | extra


def state_body(state: str, transaction: str | None) -> bytes:
    body = {"00741000": {"vr": "CS", "Value": [state]}}
    if transaction is not None:
        body["00081195"] = {"vr": "UI", "Value": [transaction]}
    return json.dumps([body]).encode()


async def create(client, dataset: dict | None = None, uid: str | None = None, prefix: str = "/v2") -> str:
    uid = uid or new_uid()
    response = await client.post(f"{prefix}/workitems?{uid}", content=json.dumps([dataset or workitem()]), headers=JSON)
    assert response.status_code == 201, response.text
    return uid


async def put_state(client, uid: str, state: str, transaction: str | None):
    return await client.put(f"/v2/workitems/{uid}/state", content=state_body(state, transaction), headers=JSON)


async def get(client, uid: str) -> dict:
    response = await client.get(f"/v2/workitems/{uid}", headers=JSON)
    assert response.status_code == 200, response.text
    (dataset,) = response.json()
    return dataset


async def search(client, query: str) -> list[dict]:
    response = await client.get(f"/v2/workitems?{query}", headers=JSON)
    assert response.status_code == 200, response.text
    return response.json()


def uids(matches: list[dict]) -> list[str]:
    return [match["00080018"]["Value"][0] for match in matches]


def warning_of(response) -> str:
    return response.headers.get("warning", "")


# -- the life cycle ---------------------------------------------------------------------------------------------


async def test_life_cycle_create_claim_update_complete(client):
    uid = new_uid()
    response = await client.post(f"/v2/workitems?{uid}", content=json.dumps([workitem()]), headers=JSON)
    assert response.status_code == 201
    assert response.headers["location"] == f"http://testserver/v2/workitems/{uid}"
    assert response.content == b""

    stored = await get(client, uid)
    assert stored["00741000"]["Value"] == ["SCHEDULED"]
    assert stored["00080016"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
    assert stored["00080018"]["Value"] == [uid]

    transaction = new_uid()
    response = await put_state(client, uid, "IN PROGRESS", transaction)
    assert response.status_code == 200, response.text
    claimed = await get(client, uid)
    assert claimed["00741000"]["Value"] == ["IN PROGRESS"]
    assert "00081195" not in claimed and transaction not in json.dumps(claimed)

    output = {"00404033": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": ["1.2.3.5"]}}]}}  # OutputInformationSequence
    results = {
        "00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": ["100"]}}]},  # ProcedureStepProgress
        "00741216": {"vr": "SQ", "Value": [output]},  # UnifiedProcedureStepPerformedProcedureSequence
    }
    response = await client.post(f"/v2/workitems/{uid}?{transaction}", content=json.dumps([results]), headers=JSON)
    assert response.status_code == 200, response.text
    assert response.headers["content-location"] == f"http://testserver/v2/workitems/{uid}"
    updated = await get(client, uid)
    assert updated["00741216"] == results["00741216"] and updated["00741002"] == results["00741002"]

    response = await put_state(client, uid, "COMPLETED", transaction)
    assert response.status_code == 200 and not warning_of(response)
    response = await put_state(client, uid, "COMPLETED", transaction)
    assert response.status_code == 200
    assert warning_of(response) == "299 dicomweb-lake: The UPS is already in the requested state of COMPLETED."
    assert uids(await search(client, "ProcedureStepState=COMPLETED")) == [uid]
    assert await search(client, "ProcedureStepState=SCHEDULED") == []


async def test_create_forms_and_duplicates(client, services):
    standard = new_uid()
    response = await client.post(f"/v2/workitems?AffectedSOPInstanceUID={standard}", content=json.dumps(workitem()), headers=JSON)
    assert response.status_code == 201, response.text
    in_dataset = new_uid()
    body = workitem(**{"00080018": {"vr": "UI", "Value": [in_dataset]}})
    response = await client.post("/v2/workitems", content=json.dumps([body]), headers=JSON)
    assert response.status_code == 201 and response.headers["location"].endswith(in_dataset)

    response = await client.post(f"/v2/workitems?{standard}", content=json.dumps([workitem()]), headers=JSON)
    assert response.status_code == 409 and standard in response.json()["message"]
    unlabeled = await create(client, workitem(**{"00741202": {"vr": "LO"}}))
    assert (await get(client, unlabeled))["00741202"]["Value"] == ["DEFAULT"]  # 2/1: the service fills it in
    response = await client.post(f"/v2/workitems?{new_uid()}", content=json.dumps([body]), headers=JSON)
    assert response.status_code == 400 and "differs" in response.json()["message"]
    response = await client.post("/v2/workitems?1.2.x", content=json.dumps([workitem()]), headers=JSON)
    assert response.status_code == 400 and "not a valid UID" in response.json()["message"]
    response = await client.post("/v2/workitems?color=red", content=json.dumps([workitem()]), headers=JSON)
    assert response.status_code == 400 and "'color'" in response.json()["message"]
    response = await client.post("/v2/workitems?AffectedSOPInstanceUID=", content=json.dumps([workitem()]), headers=JSON)
    assert response.status_code == 400 and "has no value" in response.json()["message"]


async def test_create_names_every_attribute_that_breaks_the_n_create_requirements(client, services):
    dataset = workitem(
        **{
            "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
            "00081195": {"vr": "UI", "Value": ["1.2.3"]},
            "00404041": {"vr": "CS", "Value": ["SOON"]},
            "00404005": {"vr": "DT", "Value": ["2026-12-01"]},
            "00741204": {"vr": "LO", "Value": []},
        }
    )
    dataset["00741002"] = {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": ["50"]}}]}
    del dataset["00741200"], dataset["00404018"], dataset["00101002"]
    uid = new_uid()
    services.statistics.reset()
    response = await client.post(f"/v2/workitems?{uid}", content=json.dumps([dataset]), headers=JSON)
    assert response.status_code == 400
    message = response.json()["message"]
    for expected in (
        "ScheduledProcedureStepPriority (00741200) is missing",
        "ProcedureStepLabel (00741204) is empty",
        "ScheduledProcedureStepStartDateTime (00404005) '2026-12-01' is not a valid DT",
        "ScheduledWorkitemCodeSequence (00404018) is missing",
        "InputReadinessState (00404041) is 'SOON'; allowed: READY, UNAVAILABLE, INCOMPLETE",
        "ProcedureStepState (00741000) is 'IN PROGRESS'; allowed: SCHEDULED",
        "TransactionUID (00081195) must be empty when a workitem is created",
        "ProcedureStepProgressInformationSequence (00741002) must be empty",
        "OtherPatientIDsSequence (00101002) is missing (type 2)",
    ):
        assert expected in message, (expected, message)
    assert services.statistics.requests == 0  # nothing stored, nothing even read
    assert (await client.get(f"/v2/workitems/{uid}")).status_code == 404


@pytest.mark.parametrize(
    "body, content_type, status, text",
    [
        (b"", "application/dicom+json", 400, "no body"),
        (b"{not json", "application/dicom+json", 400, "not JSON"),
        (b"[{}, {}]", "application/dicom+json", 400, "holds 2 datasets"),
        (b'{"0010": {"vr": "PN"}}', "application/dicom+json", 400, "is not a tag"),
        (b'{"00100010": "Doe"}', "application/dicom+json", 400, "an element is an object"),
        (b'{"00100010": {"vr": "PN", "Value": "Doe"}}', "application/dicom+json", 400, "must be an array"),
        (b'{"00404021": {"vr": "SQ", "Value": [' * 20 + b"{}" + b"]}}" * 20, "application/dicom+json", 400, "nest deeper"),
        (b"[" * 100_000 + b"]" * 100_000, "application/dicom+json", 400, "nests deeper"),
        (b"{}", "application/xml", 415, "application/dicom+json"),
        (b"{}", None, 415, "no Content-Type"),
    ],
)
async def test_create_refuses_malformed_bodies(client, body, content_type, status, text):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(f"/v2/workitems?{new_uid()}", content=body, headers=headers)
    assert response.status_code == status and text in response.json()["message"], response.text


async def test_bodies_larger_than_a_workitem_are_refused_unread(client):
    comment = {"00400400": {"vr": "LT", "Value": ["x" * MAX_WORKITEM_BYTES]}}
    response = await client.post(f"/v2/workitems?{new_uid()}", content=json.dumps([workitem(**comment)]), headers=JSON)
    assert response.status_code == 413


# -- state changes: every refusal ---------------------------------------------------------------------------------


async def test_change_state_refusals_follow_the_state_machine(client):
    uid = await create(client)
    owner, other = new_uid(), new_uid()
    inconsistent = "299 dicomweb-lake: The submitted request is inconsistent with the state of the UPS Instance."

    response = await put_state(client, uid, "COMPLETED", owner)  # SCHEDULED → COMPLETED: C310
    assert response.status_code == 409 and warning_of(response) == inconsistent
    assert "C310" in response.json()["message"]
    response = await put_state(client, uid, "IN PROGRESS", None)
    assert response.status_code == 400 and warning_of(response) == "299 dicomweb-lake: The Transaction UID is missing."
    response = await put_state(client, uid, "SCHEDULED", owner)
    assert response.status_code == 400 and "C303" in response.json()["message"]
    response = await put_state(client, uid, "DONE", owner)
    assert response.status_code == 400 and "'DONE' is not a Procedure Step State" in response.json()["message"]
    response = await put_state(client, uid, "IN PROGRESS", "1.2.x")
    assert response.status_code == 400 and "not a valid UID" in response.json()["message"]
    extra = json.dumps([{"00741000": {"vr": "CS", "Value": ["IN PROGRESS"]}, "00100020": {"vr": "LO", "Value": ["X"]}}])
    response = await client.put(f"/v2/workitems/{uid}/state", content=extra, headers=JSON)
    assert response.status_code == 400 and "PatientID (00100020)" in response.json()["message"]
    assert (await get(client, uid))["00741000"]["Value"] == ["SCHEDULED"]  # nothing of the above changed it

    assert (await put_state(client, uid, "IN PROGRESS", owner)).status_code == 200
    response = await put_state(client, uid, "IN PROGRESS", other)  # someone else's claim: C301
    assert response.status_code == 400 and warning_of(response) == "299 dicomweb-lake: The Transaction UID is incorrect."
    response = await put_state(client, uid, "IN PROGRESS", owner)  # already IN PROGRESS: C302
    assert response.status_code == 409 and warning_of(response) == inconsistent
    response = await put_state(client, uid, "COMPLETED", other)
    assert response.status_code == 400 and "Transaction UID is incorrect" in warning_of(response)
    response = await put_state(client, uid, "CANCELED", owner)
    assert response.status_code == 200 and not warning_of(response)
    canceled = await get(client, uid)
    assert canceled["00741000"]["Value"] == ["CANCELED"]
    assert "00404052" in canceled["00741002"]["Value"][0]  # Procedure Step Cancellation DateTime

    response = await put_state(client, uid, "CANCELED", owner)  # B304: a warning, not a failure
    assert response.status_code == 200
    assert warning_of(response) == "299 dicomweb-lake: The UPS is already in the requested state of CANCELED."
    for state in ("IN PROGRESS", "COMPLETED"):  # final states are final: C300
        response = await put_state(client, uid, state, owner)
        assert response.status_code == 409 and "C300" in response.json()["message"]

    response = await put_state(client, new_uid(), "IN PROGRESS", owner)
    assert response.status_code == 404


# -- updates ---------------------------------------------------------------------------------------------------------


async def test_update_refusals(client):
    uid = await create(client)
    label = json.dumps([{"00741204": {"vr": "LO", "Value": ["Nodule detection v2"]}}])
    owner = new_uid()

    response = await client.post(f"/v2/workitems/{uid}?{owner}", content=label, headers=JSON)  # unclaimed: no UID
    assert response.status_code == 400
    assert warning_of(response) == "299 dicomweb-lake: The target URI did not reference a claimed Workitem."
    response = await client.post(f"/v2/workitems/{uid}", content=label, headers=JSON)
    assert response.status_code == 200, response.text
    assert (await get(client, uid))["00741204"]["Value"] == ["Nodule detection v2"]

    fixed = json.dumps(
        [
            {
                "00741000": {"vr": "CS", "Value": ["COMPLETED"]},
                "00080018": {"vr": "UI", "Value": ["1.2.3"]},
                "00081195": {"vr": "UI", "Value": ["1.2.3"]},
                "00741200": {"vr": "CS", "Value": ["URGENT"]},
                "00741204": {"vr": "LO", "Value": []},
                "00100020": {"vr": "LO", "Value": ["SOMEONE-ELSE"]},
            }
        ]
    )
    response = await client.post(f"/v2/workitems/{uid}", content=fixed, headers=JSON)
    assert response.status_code == 400
    message = response.json()["message"]
    for expected in (
        "ProcedureStepState (00741000) cannot be updated",
        "SOPInstanceUID (00080018) cannot be updated",
        "TransactionUID (00081195) cannot be updated",
        "ScheduledProcedureStepPriority (00741200) is 'URGENT'",
        "ProcedureStepLabel (00741204) is empty",
        "PatientID (00100020) cannot be updated: the Unified Procedure Step Relationship Module is set at creation only",
    ):
        assert expected in message, (expected, message)

    assert (await put_state(client, uid, "IN PROGRESS", owner)).status_code == 200
    for query in ("", f"?{new_uid()}"):
        response = await client.post(f"/v2/workitems/{uid}{query}", content=label, headers=JSON)
        assert response.status_code == 400 and "did not reference a claimed Workitem" in warning_of(response)
    assert (await client.post(f"/v2/workitems/{uid}?TransactionUID={owner}", content=label, headers=JSON)).status_code == 200
    assert (await put_state(client, uid, "COMPLETED", owner)).status_code == 200
    response = await client.post(f"/v2/workitems/{uid}?{owner}", content=label, headers=JSON)
    assert response.status_code == 400 and "inconsistent with the current state of the Workitem" in warning_of(response)
    assert (await client.post(f"/v2/workitems/{new_uid()}", content=label, headers=JSON)).status_code == 404


# -- cancel requests --------------------------------------------------------------------------------------------------


async def test_cancel_requests(client):
    scheduled = await create(client)
    reason = json.dumps([{"00741238": {"vr": "LT", "Value": ["study was recalled"]}}])
    response = await client.post(f"/v2/workitems/{scheduled}/cancelrequest", content=reason, headers=JSON)
    assert response.status_code == 202 and not warning_of(response)
    canceled = await get(client, scheduled)
    assert canceled["00741000"]["Value"] == ["CANCELED"]
    progress = canceled["00741002"]["Value"][0]
    assert progress["00741238"]["Value"] == ["study was recalled"] and "00404052" in progress
    response = await client.post(f"/v2/workitems/{scheduled}/cancelrequest")
    assert response.status_code == 202
    assert warning_of(response) == "299 dicomweb-lake: The UPS is already in the requested state of CANCELED."

    claimed, owner = await create(client), new_uid()
    assert (await put_state(client, claimed, "IN PROGRESS", owner)).status_code == 200
    contact = {"0074100A": {"vr": "UR", "Value": ["mailto:radiology@example.org"]}, "0074100C": {"vr": "LO", "Value": ["Dr. X"]}}
    request = json.dumps([{"00741238": {"vr": "LT", "Value": ["study was recalled"]}} | contact])
    response = await client.post(f"/v2/workitems/{claimed}/cancelrequest", content=request, headers=JSON)
    assert response.status_code == 202
    recorded = await get(client, claimed)
    assert recorded["00741000"]["Value"] == ["IN PROGRESS"]  # its owner decides
    progress = recorded["00741002"]["Value"][0]
    assert progress["00741238"]["Value"] == ["study was recalled"]
    assert progress["00741008"]["Value"] == [contact]  # Procedure Step Communications URI Sequence (PS3.3 C.30.2)

    response = await client.post(f"/v2/workitems/{claimed}/cancelrequest")  # without a reason: one is recorded
    assert response.status_code == 202
    assert (await get(client, claimed))["00741002"]["Value"][0]["00741238"]["Value"] == ["cancellation requested"]
    assert (await put_state(client, claimed, "COMPLETED", owner)).status_code == 200
    response = await client.post(f"/v2/workitems/{claimed}/cancelrequest")
    assert response.status_code == 409 and warning_of(response) == "299 dicomweb-lake: The UPS is already COMPLETED."

    other = json.dumps([{"00100020": {"vr": "LO", "Value": ["X"]}}])
    response = await client.post(f"/v2/workitems/{claimed}/cancelrequest", content=other, headers=JSON)
    assert response.status_code == 400 and "PatientID (00100020)" in response.json()["message"]
    assert (await client.post(f"/v2/workitems/{new_uid()}/cancelrequest")).status_code == 404


# -- search --------------------------------------------------------------------------------------------------------------


async def test_search_matching_keys(client):
    first = await create(client, workitem(patient_id="P-1", patient_name="Åström^Åsa", station="GPU-1", start="20261201080000"))
    second = await create(client, workitem(patient_id="P-2", patient_name="Smith^John", station="GPU-2", start="20261202080000"))
    third = await create(
        client, workitem(patient_id="P-3", label="READING", task="READ", readiness="INCOMPLETE", start="20261203080000")
    )
    assert (await put_state(client, second, "IN PROGRESS", new_uid())).status_code == 200

    cases = {
        "PatientID=P-1": [first],
        "PatientID=P-*": sorted([first, second, third]),
        "PatientName=astrom": [],
        "PatientName=ASTROM*": [first],
        "PatientName=asa&fuzzymatching=true": [first],
        "ProcedureStepState=SCHEDULED": sorted([first, third]),
        "ProcedureStepState=IN PROGRESS": [second],
        "ScheduledProcedureStepStartDateTime=20261201-20261202": sorted([first, second]),
        "ScheduledProcedureStepStartDateTime=20261203-": [third],
        "WorklistLabel=READING": [third],
        "InputReadinessState=INCOMPLETE": [third],
        "ScheduledStationNameCodeSequence.CodeValue=GPU-2": [second],
        "00404025.00080100=GPU-1": [first],
        "0040a370.00080050=": sorted([first, second, third]),
        "ScheduledWorkitemCodeSequence.CodeValue=NODULE&ProcedureStepState=SCHEDULED": [first],
        f"SOPInstanceUID={first}\\{third}&PatientID=P-3": [third],
        "ProcedureStepState=SCHEDULED,IN PROGRESS&WorklistLabel=AI": sorted([first, second]),
    }
    for query, expected in cases.items():
        assert sorted(uids(await search(client, query))) == expected, query
    everything = await search(client, "")
    assert sorted(uids(everything)) == sorted([first, second, third])
    assert all("00081195" not in match for match in everything)

    response = await client.get("/v2/workitems?ProcedureStepState=SCHEDULED&limit=1")
    assert len(response.json()) == 1 and "offset=1" in warning_of(response)
    response = await client.get("/v2/workitems?ProcedureStepState=SCHEDULED&limit=1&offset=1")
    assert len(response.json()) == 1 and not warning_of(response)


@pytest.mark.parametrize(
    "query, text",
    [
        ("Modality=CT", "not a supported workitem matching key"),
        ("ScheduledProcedureStepStartDateTime=2026-12-01", "is not a value or a range"),
        ("ScheduledProcedureStepStartDateTime=202612xx", "is not a valid DT value"),
        ("SOPInstanceUID=1.2.*", "UIDs cannot hold wildcards"),
        ("limit=0", "limit=0"),
        ("limit=ten", "not a non-negative integer"),
        ("offset=100001", "larger than the maximum"),
        ("PatientID=1&PatientID=2", "more than once"),
        ("fuzzymatching=maybe", "use true or false"),
    ],
)
async def test_search_refusals(client, query, text):
    response = await client.get(f"/v2/workitems?{query}")
    assert response.status_code == 400 and text in response.json()["message"], response.text


async def test_workitems_of_a_partition_stay_in_it(client):
    uid = await create(client, prefix="/v2/partitions/lab")
    assert (await client.get(f"/v2/workitems/{uid}")).status_code == 404
    assert (await client.get(f"/v2/partitions/lab/workitems/{uid}")).status_code == 200
    assert await search(client, "PatientID=PAT-1") == []
    response = await client.get("/v2/partitions/lab/workitems?PatientID=PAT-1")
    assert uids(response.json()) == [uid]


# -- concurrency: 16 workers, 10 workitems ------------------------------------------------------------------------------


async def test_sixteen_workers_racing_claim_each_of_ten_workitems_exactly_once(client, services):
    items = [await create(client) for _ in range(10)]
    outcomes: dict[str, list[tuple[str, int]]] = {uid: [] for uid in items}

    async def worker(number: int) -> None:
        transaction = new_uid()
        order = random.Random(number).sample(items, len(items))
        for uid in order:
            response = await put_state(client, uid, "IN PROGRESS", transaction)
            outcomes[uid].append((transaction, response.status_code))

    await asyncio.gather(*(worker(number) for number in range(16)))
    assert services.workitems.lost_races > 0  # the claims did race: some writes lost on the ETag and were decided again

    for uid, tries in outcomes.items():
        assert len(tries) == 16
        winners = [transaction for transaction, status in tries if status == 200]
        assert len(winners) == 1, (uid, tries)
        assert sorted({status for _, status in tries if status != 200}) in ([400], [400, 409], [409])
        # The winner holds the lock: its update passes, any other worker's is refused.
        label = json.dumps([{"00741204": {"vr": "LO", "Value": ["mine"]}}])
        loser = next(transaction for transaction, status in tries if status != 200)
        assert (await client.post(f"/v2/workitems/{uid}?{loser}", content=label, headers=JSON)).status_code == 400
        assert (await client.post(f"/v2/workitems/{uid}?{winners[0]}", content=label, headers=JSON)).status_code == 200


# -- cost: key lookups, flat in the size of the worklist ------------------------------------------------------------------


QUERIES = [
    "PatientID=TARGET",
    "ProcedureStepState=SCHEDULED&limit=3",
    "ScheduledStationNameCodeSequence.CodeValue=GPU-TARGET",
    "ScheduledProcedureStepStartDateTime=20300101-20300102",
    "PatientName=TARGET*",
    "SOPInstanceUID=1.2.3",
]


async def _worklist(client, others: int) -> None:
    """Three SCHEDULED targets, one more SCHEDULED workitem, and ``others`` COMPLETED ones that match no query."""
    target = workitem(patient_id="TARGET", patient_name="Target^Tess", station="GPU-TARGET", start="20300101120000")
    for _ in range(3):
        await create(client, target)
    await create(client, workitem(patient_id="SPARE", patient_name="Spare^Sam", station="GPU-0"))
    for number in range(others):
        uid = await create(client, workitem(patient_id=f"OTHER-{number}", patient_name=f"Other^{number}", station="GPU-0"))
        transaction = new_uid()
        assert (await put_state(client, uid, "IN PROGRESS", transaction)).status_code == 200
        assert (await put_state(client, uid, "COMPLETED", transaction)).status_code == 200


async def _costs(client, services) -> dict[str, tuple[int, int, int]]:
    statistics = services.statistics
    costs = {}
    for query in QUERIES:
        statistics.reset()
        matches = await search(client, query)
        costs[query] = (len(matches), statistics.requests, statistics.entities_read)
    return costs


async def test_search_cost_is_flat_in_the_size_of_the_worklist(client, services):
    await _worklist(client, others=2)
    small = await _costs(client, services)
    for number in range(2, 20):
        uid = await create(client, workitem(patient_id=f"OTHER-{number}", patient_name=f"Other^{number}", station="GPU-0"))
        transaction = new_uid()
        assert (await put_state(client, uid, "IN PROGRESS", transaction)).status_code == 200
        assert (await put_state(client, uid, "COMPLETED", transaction)).status_code == 200
    large = await _costs(client, services)
    assert large == small, (small, large)
    # (matches, requests, entities): one lookup range (one entry per candidate) and one point read per candidate.
    assert small == {
        "PatientID=TARGET": (3, 4, 6),
        "ProcedureStepState=SCHEDULED&limit=3": (3, 5, 8),  # limit + 1 candidates: the extra one says "more"
        "ScheduledStationNameCodeSequence.CodeValue=GPU-TARGET": (3, 4, 6),
        "ScheduledProcedureStepStartDateTime=20300101-20300102": (3, 4, 6),
        "PatientName=TARGET*": (3, 4, 6),
        "SOPInstanceUID=1.2.3": (0, 1, 0),  # a point read
    }


# -- hostile input: precise 4xx, never a failure of the service --------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@settings(deadline=None, max_examples=200)
@given(st.data())
def test_the_workitem_rules_refuse_any_mangled_dataset_by_name(data):
    original = workitem()
    dataset = dict(original)
    for _ in range(data.draw(st.integers(1, 6))):
        tag = data.draw(st.sampled_from(sorted(original)))
        change = data.draw(st.sampled_from(["drop", "element", "values", "vr"]))
        if change == "drop":
            dataset.pop(tag, None)
        elif change == "element":
            dataset[tag] = data.draw(JSON_VALUES)
        elif change == "values":
            dataset[tag] = {"vr": original[tag]["vr"], "Value": data.draw(JSON_VALUES)}
        else:
            dataset[tag] = {"vr": data.draw(st.sampled_from(["SQ", "PN", "CS", "DT", "X"])), "Value": original[tag].get("Value")}
    try:
        shaped = parse_dataset(json.dumps([dataset]).encode())
    except WorkitemProblem:
        return  # refused by name before anything else looks at it
    with contextlib.suppress(WorkitemProblem):
        check_create(shaped, "1.2.3")
    # Any dataset of the right shape can be stored (an update merges without re-checking all of it): indexing takes it.
    index_values(shaped)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.sampled_from([*KEYS_BY_NAME, "limit", "offset", "fuzzymatching", "includefield", "x"]), max_size=3),
    values=st.lists(st.text(alphabet="*?-,\\ ^=.0123456789AZaz%", max_size=12), min_size=3, max_size=3),
)
async def test_search_parameters_never_fail_the_service(client, names, values):
    response = await client.get("/v2/workitems", params=list(zip(names, values, strict=False)))
    assert response.status_code in (200, 400), response.text


# -- the worker example of docs/workitems.md -----------------------------------------------------------------------------


def test_the_worker_example_of_the_docs_runs_against_the_server(settings, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(docs_example("workitems.md", "worker-example"))
    with running_server(settings, tmp_path / "server.log") as (url, _):
        result = run_script(script, url)
    assert "completed 3 workitems" in result.stdout, result.stdout

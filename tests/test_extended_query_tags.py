"""Extended query tags, long-running operations and the partitions list, against a real Azurite.

Tags are added through the API, the archive stored before them is reindexed by the
operations worker (``run_operations``, what the timer and the local server's background
task call), and searches by them are checked for answers and for what they read.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

import pydicom
import pytest

from dicom_core.dicom.extended_tags import LEVELS
from dicom_core.events import run_operations
from dicom_core.operations import jobs
from dicom_core.operations import reconcile as reconcile_operation
from dicom_core.operations import store as store_operation
from dicom_core.operations.extended_tags import add_tags as add_tag_operation
from dicom_core.operations.reconcile import ADDED, reconcile_path
from dicom_core.services import Services
from dicom_core.settings import Jobs, Settings
from dicom_core.storage.lookup import partition_key
from dicom_core.storage.lookup_plan import ValueRange
from tests.dicom_files import new_instance
from tests.server import docs_example, run_script, running_server
from tests.test_reconcile import path_of, upload
from tests.test_search import reads, store, uids_of

PRIVATE_CREATOR = "ACME AI"

# keyword: (VR, level, three stored values, [(query, indexes of the values it matches)])
VR_CASES: dict[str, tuple[str, str, list, list[tuple[str, list[int]]]]] = {
    "StationAETitle": ("AE", "Series", ["SCANNER1", "SCANNER2", "OTHER"], [("SCANNER1", [0]), ("SCAN*", [0, 1])]),
    "PatientAge": ("AS", "Study", ["045Y", "046Y", "003M"], [("045Y", [0]), ("04*", [0, 1])]),
    "Laterality": ("CS", "Series", ["L", "R", "L"], [("L", [0, 2]), ("R\\L", [0, 1, 2])]),
    "ContentDate": ("DA", "Instance", ["20200101", "20200215", "20210101"], [("20200101", [0]), ("20200101-20200301", [0, 1])]),
    "InstanceCoercionDateTime": (
        "DT", "Instance", ["20200101120000", "20200101130000", "20210101"], [("2020", [0, 1]), ("20200101125959-", [1, 2])],
    ),
    "EventTimeOffset": ("FD", "Instance", [1.5, -2.25, 100.0], [("1.5", [0]), ("-3-2", [0, 1]), ("2-", [2])]),
    "RecommendedDisplayFrameRateInFloat": ("FL", "Instance", [25.0, 30.0, 60.0], [("30", [1]), ("26-60", [1, 2])]),
    "AcquisitionNumber": ("IS", "Instance", ["7", "8", "9"], [("007", [0])]),
    "ProtocolName": ("LO", "Series", ["Head CT", "Head MR", "Chest"], [("Head CT", [0]), ("Head*", [0, 1]), ("*ead*", [0, 1])]),
    "PerformingPhysicianName": (
        "PN", "Series", ["Curie^Marie", "Pasteur^Louis", "Curie^Pierre"],
        [("curie*", [0, 2]), ("Curie^M*", [0]), ("*pierre", [2])],
    ),
    "StationName": ("SH", "Series", ["CT01", "CT02", "MR01"], [("CT0?", [0, 1])]),
    "ReferencePixelX0": ("SL", "Instance", [-5, 0, 70000], [("-5", [0]), ("-5-0", [0, 1]), ("1-", [2])]),
    "TagAngleSecondAxis": ("SS", "Instance", [-90, 0, 90], [("90", [2]), ("-100--1", [0])]),
    "ContentTime": ("TM", "Instance", ["083000", "120000", "235959"], [("08", [0]), ("1000-2359", [1, 2])]),
    "FrameOfReferenceUID": ("UI", "Series", ["1.2.3.1", "1.2.3.2", "1.2.3.3"], [("1.2.3.1\\1.2.3.3", [0, 2])]),
    "NumberOfStudyRecordsInInstance": ("UL", "Instance", [1, 4000000000, 5], [("4000000000", [1]), ("2-10", [2])]),
    "PrivateGroupReference": ("US", "Instance", [9, 10, 65535], [("10", [1]), ("9-10", [0, 1])]),
    "SliceThickness": ("DS", "Instance", ["0.625", "5", "5.0"], [("5", [1, 2]), ("0.5-1", [0])]),
}  # fmt: skip
RESOURCES = {"Study": "/v2/studies", "Series": "/v2/series", "Instance": "/v2/instances"}
UID_TAGS = {"Study": "0020000D", "Series": "0020000E", "Instance": "00080018"}


def private_instance(value: str | None, creator: str = PRIVATE_CREATOR, **attributes) -> bytes:
    """An instance with a private attribute (0009,xx01) in the block its private creator reserves."""
    dataset = pydicom.dcmread(io.BytesIO(new_instance(**attributes)))
    if value is not None:
        dataset.private_block(0x0071, creator, create=True).add_new(0x01, "LO", value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


async def add_tags(client, tags: list[dict]) -> str:
    response = await client.post("/v2/extendedquerytags", json=tags)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["href"].endswith(f"/v2/operations/{body['id']}")
    return body["id"]


async def operation(client, operation_id: str) -> dict:
    response = await client.get(f"/v2/operations/{operation_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def search(client, url: str, **params) -> list[dict]:
    response = await client.get(url, params=params)
    assert response.status_code == 200, f"{url} {params}: {response.text}"
    return response.json()


def uid_values(matches: list[dict], tag: str) -> list[str]:
    return sorted(match[tag]["Value"][0] for match in matches)


# -- adding, reindexing, searching ----------------------------------------------------------------------


async def test_tags_added_to_an_archive_are_reindexed_then_searched_like_standard_keys(client, services):
    # One study per stored value of every case: the archive exists before the tags.
    instances = [new_instance(**{keyword: values[n] for keyword, (_, _, values, _) in VR_CASES.items()}) for n in range(3)]
    await store(client, instances)
    tags = [{"path": keyword, "vr": vr, "level": level} for keyword, (vr, level, _, _) in VR_CASES.items()]
    operation_id = await add_tags(client, tags)

    started = await operation(client, operation_id)
    assert (started["status"], started["percentComplete"], started["type"]) == ("notStarted", 0, "reindex")
    assert len(started["resources"]) == len(tags)
    assert started["resources"][0].startswith("http://testserver/v2/extendedquerytags/")
    listed = (await client.get("/v2/extendedquerytags")).json()
    assert {tag["status"] for tag in listed} == {"Adding"} and listed[0]["operation"]["id"] == operation_id
    refused = await client.get("/v2/instances", params={"SliceThickness": "5"})
    assert refused.status_code == 400 and "adding" in refused.json()["message"]

    assert await run_operations(services) == 1
    done = await operation(client, operation_id)
    assert (done["status"], done["percentComplete"]) == ("completed", 100)
    assert {tag["status"] for tag in (await client.get("/v2/extendedquerytags")).json()} == {"Ready"}

    uids = {level: [uids_of(data)[index] for data in instances] for index, level in enumerate(("Study", "Series", "Instance"))}
    for keyword, (vr, level, _, queries) in VR_CASES.items():
        for query, expected in queries:
            matches = await search(client, RESOURCES[level], **{keyword: query})
            assert uid_values(matches, UID_TAGS[level]) == sorted(uids[level][i] for i in expected), f"{keyword}={query}"
            tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
            assert all(match[tag]["vr"] == vr for match in matches), f"{keyword} is returned as matched"


async def test_a_store_indexes_ready_tags_at_once_and_includefield_returns_them(client, services):
    await add_tags(client, [{"path": "00181030", "level": "Series"}, {"path": "PatientAge", "level": "Study"}])
    await run_operations(services)  # an empty archive: completed at once
    data = new_instance(ProtocolName="Lung screening", PatientAge="061Y")
    await store(client, [data])
    study, series, _ = uids_of(data)
    matches = await search(client, "/v2/series", ProtocolName="Lung*")
    assert uid_values(matches, "0020000E") == [series]
    assert "00101010" not in matches[0]  # a study attribute a series search does not return by default
    studies = await search(client, "/v2/studies", includefield="PatientAge,ProtocolName")
    assert studies[0]["00101010"] == {"vr": "AS", "Value": ["061Y"]}
    series_json = await search(client, "/v2/series", includefield="00181030")
    assert series_json[0]["00181030"]["Value"] == ["Lung screening"]
    assert uid_values(await search(client, "/v2/studies", PatientAge="061Y"), "0020000D") == [study]
    # A tag matches at its level and below it, like a standard key, and not above it.
    assert uid_values(await search(client, "/v2/series", PatientAge="061Y"), "0020000E") == [series]
    assert len(await search(client, "/v2/instances", ProtocolName="Lung screening", PatientAge="06*")) == 1
    above = await client.get("/v2/studies", params={"ProtocolName": "Lung*"})
    assert above.status_code == 400 and "search /series instead" in above.json()["message"]


@pytest.mark.parametrize("writer", [store_operation, reconcile_operation], ids=["store", "reconcile"])
async def test_tags_added_while_a_store_is_under_way_find_its_instances(client, services, settings, monkeypatch, writer):
    """The store (or reconcile) reads the registry, the tags are added and reindexed, then it writes all it writes."""
    registry = writer.indexed_declarations

    async def read_then_add_tags(writer_services: Services) -> list:
        before = await registry(writer_services)
        monkeypatch.setattr(writer, "indexed_declarations", registry)  # its later reads are plain
        tags = [
            {"path": "ProtocolName", "vr": "LO", "level": "Series"},
            {"path": "SliceThickness", "vr": "DS", "level": "Instance"},
            {"path": "PatientAge", "vr": "AS", "level": "Study"},
        ]
        await add_tag_operation(services, tags)
        assert await run_operations(services) == 1  # nothing to reindex yet: Ready before the writes
        return before

    monkeypatch.setattr(writer, "indexed_declarations", read_then_add_tags)
    data = new_instance(ProtocolName="Knee MR", SliceThickness="2.5", PatientAge="033Y")
    if writer is store_operation:
        await store(client, [data])
    else:  # a file copied into the lake by hand
        await upload(settings, path_of(services, data), data)
        assert (await reconcile_path(services, path_of(services, data))).outcome == ADDED
    study, series, sop = uids_of(data)
    assert {tag["status"] for tag in (await client.get("/v2/extendedquerytags")).json()} == {"Ready"}
    assert uid_values(await search(client, "/v2/series", ProtocolName="Knee*"), "0020000E") == [series]
    assert uid_values(await search(client, "/v2/instances", SliceThickness="2.5"), "00080018") == [sop]
    assert uid_values(await search(client, "/v2/studies", PatientAge="033Y"), "0020000D") == [study]
    included = await search(client, "/v2/series", includefield="ProtocolName")
    assert included[0]["00181030"]["Value"] == ["Knee MR"]


async def test_a_private_tag_matches_only_in_the_block_of_its_private_creator(client, services):
    ours, theirs = private_instance("tumour-v2"), private_instance("tumour-v2", creator="OTHER VENDOR")
    await store(client, [ours, theirs, private_instance(None)])
    await add_tags(client, [{"path": "00711001", "vr": "LO", "privateCreator": PRIVATE_CREATOR, "level": "Instance"}])
    await run_operations(services)
    matches = await search(client, "/v2/instances", **{"00711001": "tumour*"})
    assert uid_values(matches, "00080018") == [uids_of(ours)[2]]
    assert matches[0]["00711001"] == {"vr": "LO", "Value": ["tumour-v2"]}
    tag = (await client.get("/v2/extendedquerytags/00711001")).json()
    assert tag["privateCreator"] == PRIVATE_CREATOR and tag["vr"] == "LO" and tag["level"] == "Instance"


# -- errors of a tag ----------------------------------------------------------------------------------------


async def test_values_that_do_not_fit_the_vr_are_errors_of_the_tag_and_flagged_in_searches(client, services):
    good, bad = new_instance(PatientAge="045Y"), new_instance(PatientAge="45 years")
    await store(client, [good, bad])
    await add_tags(client, [{"path": "PatientAge", "level": "Study"}])
    await run_operations(services)
    late = new_instance(PatientAge="1.5")
    await store(client, [late])  # a store records its errors too

    tag = (await client.get("/v2/extendedquerytags/PatientAge")).json()
    assert tag["errors"]["count"] == 2 and tag["errors"]["href"].endswith("/v2/extendedquerytags/00101010/errors")
    errors = (await client.get("/v2/extendedquerytags/00101010/errors")).json()
    assert sorted(error["sopInstanceUid"] for error in errors) == sorted([uids_of(bad)[2], uids_of(late)[2]])
    assert all(error["tag"] == "00101010" and "AS" in error["errorMessage"] for error in errors)
    assert len((await client.get("/v2/extendedquerytags/00101010/errors", params={"limit": 1, "offset": 1})).json()) == 1

    response = await client.get("/v2/studies", params={"PatientAge": "045Y"})
    assert response.headers["erroneous-dicom-attributes"] == "00101010"
    assert uid_values(response.json(), "0020000D") == [uids_of(good)[0]]
    assert "erroneous-dicom-attributes" not in (await client.get("/v2/studies", params={"PatientID": "PAT-1"})).headers


# -- changing and deleting ------------------------------------------------------------------------------------


async def test_a_disabled_tag_is_refused_by_searches_and_a_deleted_one_is_unknown_at_once(client, services):
    data = new_instance(ProtocolName="Knee")
    await store(client, [data])
    await add_tags(client, [{"path": "ProtocolName", "level": "Series"}])
    await run_operations(services)

    patched = await client.patch("/v2/extendedquerytags/ProtocolName", json={"queryStatus": "Disabled"})
    assert patched.status_code == 200 and patched.json()["queryStatus"] == "Disabled"
    refused = await client.get("/v2/series", params={"ProtocolName": "Knee"})
    assert refused.status_code == 400 and "disabled" in refused.json()["message"]
    await client.patch("/v2/extendedquerytags/ProtocolName", json={"queryStatus": "Enabled"})
    assert len(await search(client, "/v2/series", ProtocolName="Knee")) == 1

    pk = partition_key("Microsoft.Default", LEVELS["Series"], "x.00181030")
    assert await lookup_count(services, pk) == 1
    deleted = await client.delete("/v2/extendedquerytags/00181030")
    assert deleted.status_code == 204
    assert (await client.get("/v2/series", params={"ProtocolName": "Knee"})).status_code == 400
    assert (await client.get("/v2/extendedquerytags/00181030")).json()["status"] == "Deleting"
    await run_operations(services)
    assert (await client.get("/v2/extendedquerytags/00181030")).status_code == 404
    assert await lookup_count(services, pk) == 0
    await add_tags(client, [{"path": "ProtocolName", "level": "Series"}])  # can be added again
    await run_operations(services)
    assert len(await search(client, "/v2/series", ProtocolName="Knee")) == 1


async def lookup_count(services: Services, pk: str) -> int:
    return len([row_key async for row_key in services.index.lookup.scan(pk, ValueRange("prefix", ""), 1000)])


# -- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"path": "ProtocolName", "level": "Series"}, 400, "array"),
        ([], 400, "array"),
        ("ProtocolName", 400, "array"),
        ([{"path": "PatientName", "level": "Study"}], 400, "standard matching key"),
        ([{"path": "00100010", "level": "Study"}], 400, "standard matching key"),
        ([{"path": "PixelData", "level": "Instance"}], 400, "cannot be indexed"),
        ([{"path": "00711001", "vr": "OB", "privateCreator": "X", "level": "Instance"}], 400, "cannot be indexed"),
        ([{"path": "ReferencedImageSequence", "level": "Instance"}], 400, "cannot be indexed"),
        ([{"path": "00081140.00081155", "level": "Instance"}], 400, "inside a sequence"),
        ([{"path": "00711001", "vr": "LO", "level": "Instance"}], 400, "privateCreator"),
        ([{"path": "00711001", "privateCreator": "X", "level": "Instance"}], 400, "vr"),
        ([{"path": "0018103", "level": "Series"}], 400, "neither"),
        ([{"path": "NotAKeyword", "level": "Series"}], 400, "neither"),
        ([{"path": "ProtocolName", "level": "Patient"}], 400, "level"),
        ([{"path": "ProtocolName", "vr": "CS", "level": "Series"}], 400, "LO"),
        ([{"path": "ProtocolName", "level": "Series", "extra": 1}], 400, "unknown field"),
        ([{"path": "ProtocolName", "level": "Series"}, {"path": "00181030", "level": "Series"}], 400, "more than once"),
        ([{"path": "ProtocolName", "privateCreator": "X", "level": "Series"}], 400, "no privateCreator"),
    ],
)
async def test_a_declaration_that_cannot_be_indexed_is_refused_saying_why(client, body, status, words):
    response = await client.post("/v2/extendedquerytags", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["message"]
    assert (await client.get("/v2/extendedquerytags")).json() == []


async def test_duplicates_the_tag_limit_and_bad_requests_are_refused(client, services):
    await add_tags(client, [{"path": "ProtocolName", "level": "Series"}])
    duplicate = await client.post("/v2/extendedquerytags", json=[{"path": "00181030", "level": "Series"}])
    assert duplicate.status_code == 409 and "exists" in duplicate.json()["message"]
    not_json = await client.post("/v2/extendedquerytags", content=b"[", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    many = [{"path": f"0009{0x1000 + n:04X}", "vr": "LO", "privateCreator": "X", "level": "Instance"} for n in range(128)]
    too_many = await client.post("/v2/extendedquerytags", json=many)
    assert too_many.status_code == 400 and "at most 128" in too_many.json()["message"]
    assert (await client.post("/v2/extendedquerytags", json=many[:127])).status_code == 202
    assert len((await client.get("/v2/extendedquerytags", params={"limit": 200})).json()) == 128
    assert len((await client.get("/v2/extendedquerytags", params={"limit": 10, "offset": 125})).json()) == 3
    assert (await client.get("/v2/extendedquerytags", params={"limit": 0})).status_code == 400
    assert (await client.get("/v2/extendedquerytags/00181031")).status_code == 404
    assert (await client.patch("/v2/extendedquerytags/ProtocolName", json={"queryStatus": "Off"})).status_code == 400
    adding = await client.patch("/v2/extendedquerytags/ProtocolName", json={"queryStatus": "Disabled"})
    assert adding.status_code == 409  # only a Ready tag changes
    assert (await client.get("/v2/operations/0123456789abcdef0123456789abcdef")).status_code == 404


# -- the operations mechanism ----------------------------------------------------------------------------------


def fresh(settings: Settings, **jobs_settings: int) -> Settings:
    """The test's settings with other operation settings (a second worker's)."""
    return replace(settings, jobs=replace(Jobs(), **jobs_settings))


async def test_a_reindex_killed_mid_batch_resumes_from_its_checkpoint_on_another_worker(client, services, settings):
    instances = [new_instance(ProtocolName=f"P{n:02d}", SliceThickness=str(n)) for n in range(30)]
    await store(client, instances)
    operation_id = await add_tags(
        client, [{"path": "ProtocolName", "level": "Series"}, {"path": "SliceThickness", "level": "Instance"}]
    )
    first = await Services.open(fresh(settings, batch_size=4, lease_seconds=1))
    worker = asyncio.create_task(run_operations(first, owner="worker-a"))
    while (await services.operations.get(operation_id)).done < 8:  # two batches checkpointed
        assert not worker.done(), worker.result()
        await asyncio.sleep(0.01)
    worker.cancel()  # mid-batch, the lease held: what a crash leaves behind
    with pytest.raises(asyncio.CancelledError):
        await worker
    await first.close()
    stopped = await services.operations.get(operation_id)
    assert stopped.status == "running" and stopped.lease_owner == "worker-a" and 0 < stopped.percent_complete < 100

    second = await Services.open(fresh(settings, batch_size=4, lease_seconds=1))
    try:
        assert await run_operations(second, owner="worker-b") == 0  # the lease has not expired yet
        await asyncio.sleep(1.1)
        assert await run_operations(second, owner="worker-b") == 1
    finally:
        await second.close()
    finished = await services.operations.get(operation_id)
    assert (finished.status, finished.percent_complete, finished.done, finished.total) == ("completed", 100, 30, 30)
    # Nothing missed, nothing doubled: one entry per instance and per series, every search answered.
    assert await lookup_count(services, partition_key("Microsoft.Default", LEVELS["Instance"], "x.00180050")) == 30
    assert await lookup_count(services, partition_key("Microsoft.Default", LEVELS["Series"], "x.00181030")) == 30
    assert len(await search(client, "/v2/instances", SliceThickness="0-29", limit="100")) == 30
    assert len(await search(client, "/v2/series", ProtocolName="P*", limit="100")) == 30


async def test_a_server_killed_mid_reindex_leaves_it_to_the_next_server_which_completes_it(client, services, settings, tmp_path):
    await store(client, [new_instance(ProtocolName=f"K{n:02d}") for n in range(40)])
    operation_id = await add_tags(client, [{"path": "ProtocolName", "level": "Series"}])
    environment = {"DICOM_OPERATION_BATCH_SIZE": "1", "DICOM_OPERATION_LEASE_SECONDS": "2", "DICOM_OPERATION_POLL_SECONDS": "1"}
    with running_server(settings, tmp_path / "first.log", environment) as (_, process):
        while (await services.operations.get(operation_id)).done < 2:
            assert process.poll() is None
            await asyncio.sleep(0.02)
        process.kill()  # SIGKILL: no cleanup, the lease stays held
        process.wait()
    killed = await services.operations.get(operation_id)
    assert killed.status == "running" and killed.done < 40, "the first server finished before it was killed"
    with running_server(settings, tmp_path / "second.log", environment):
        for _ in range(1200):  # the lease expires after 2 s, then 39 batches or fewer: well within 2 minutes
            if (await services.operations.get(operation_id)).status == "completed":
                break
            await asyncio.sleep(0.1)
    finished = await services.operations.get(operation_id)
    assert finished.lease_owner is None and (finished.done, finished.total) == (40, 40)
    assert await lookup_count(services, partition_key("Microsoft.Default", LEVELS["Series"], "x.00181030")) == 40
    assert len(await search(client, "/v2/series", ProtocolName="K*", limit="100")) == 40


async def test_two_workers_racing_for_one_operation_never_run_it_at_once(client, services, settings):
    await store(client, [new_instance(ProtocolName=f"R{n}") for n in range(12)])
    operation_id = await add_tags(client, [{"path": "ProtocolName", "level": "Series"}])
    record = await services.operations.get(operation_id)
    one, two = await Services.open(fresh(settings)), await Services.open(fresh(settings))
    try:
        claims = await asyncio.gather(jobs.claim(one, record, "worker-1"), jobs.claim(two, record, "worker-2"))
        assert sum(claim is not None for claim in claims) == 1  # one ETag-conditional write wins
        # Both workers look for work at once: the holder runs it, the other finds it taken.
        ran = await asyncio.gather(
            *(run_operations(worker, owner=owner) for worker, owner in ((one, "worker-1"), (two, "worker-2")))
        )
        holder = next(n for n, claim in enumerate(claims) if claim is not None)
        assert ran[holder] == 1 and ran[1 - holder] == 0
    finally:
        await one.close()
        await two.close()
    finished = await services.operations.get(operation_id)
    assert (finished.status, finished.done, finished.total) == ("completed", 12, 12)
    assert await services.operations.pending() == []


# -- what a search costs ----------------------------------------------------------------------------------------


async def test_searches_on_extended_tags_read_the_same_at_ten_times_the_archive(client, services):
    tags = [
        {"path": "ProtocolName", "level": "Series"},
        {"path": "PatientAge", "level": "Study"},
        {"path": "SliceThickness", "level": "Instance"},
    ]
    await add_tags(client, tags)
    await run_operations(services)
    target = new_instance(ProtocolName="Target protocol", PatientAge="077Y", SliceThickness="1.25")

    def filler(n: int) -> bytes:
        return new_instance(ProtocolName=f"Filler {n}", PatientAge="030Y", SliceThickness="3")

    await store(client, [target, *(filler(n) for n in range(10))])
    queries = [
        ("/v2/series", {"ProtocolName": "Target protocol"}),
        ("/v2/series", {"ProtocolName": "Targ*"}),
        ("/v2/studies", {"PatientAge": "077Y"}),
        ("/v2/instances", {"SliceThickness": "1-1.5"}),
        ("/v2/instances", {"SliceThickness": "1.25", "includefield": "ProtocolName"}),
    ]
    small = [await reads(client, services, url, params) for url, params in queries]
    assert all(matches == 1 for matches, _, _ in small), small
    await store(client, [filler(n) for n in range(10, 110)])
    large = [await reads(client, services, url, params) for url, params in queries]
    for (url, params), before, after in zip(queries, small, large, strict=True):
        assert before == after, f"{url} {params}: (matches, requests, entities) {before} at 11, {after} at 111"
    # The registry (one query, its 3 tags), then what a standard key costs: one lookup range, the series, its study.
    assert large[0] == (1, 4, 6)


async def test_the_reindex_rate_reads_each_instance_once(client, services, settings):
    await store(client, [new_instance(ProtocolName=f"Q{n}") for n in range(20)])
    await add_tags(client, [{"path": "ProtocolName", "level": "Series"}])
    worker = await Services.open(fresh(settings, batch_size=10))
    try:
        await run_operations(worker)
        # Per batch of 10: the registry, the batch, lookup writes, then a read and a merge per instance and per series.
        assert worker.statistics.entities_read <= 20 + 3 * 3 + 2 * 20 + 20
    finally:
        await worker.close()


# -- partitions ----------------------------------------------------------------------------------------------------


async def test_partitions_lists_the_partitions_that_hold_data(client, services):
    assert (await client.get("/v2/partitions")).json() == []
    await store(client, [new_instance()])
    await store(client, [new_instance(), new_instance()], url="/v2/partitions/site-b/studies")
    listed = (await client.get("/v2/partitions")).json()
    assert [(p["partitionKey"], p["partitionName"]) for p in listed] == [(1, "Microsoft.Default"), (2, "site-b")]
    assert all(p["createdDate"] for p in listed)


# -- the example of docs/extended-query-tags.md ----------------------------------------------------------------------


def test_the_example_of_the_docs_runs_against_the_server(settings, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(docs_example("extended-query-tags.md", "extended-query-tags-example"))
    with running_server(settings, tmp_path / "server.log", {"DICOM_OPERATION_POLL_SECONDS": "1"}) as (url, _):
        for _ in range(2):  # twice: the second run finds the tags of the first, deletes and adds them again
            result = run_script(script, url)
            assert "2 series by ProtocolName" in result.stdout, result.stdout
            assert "searching by ProtocolName answers 400" in result.stdout, result.stdout

"""Files copied into and deleted from the lake with the plain blob SDK reach the index by reconcile and reindex."""

from __future__ import annotations

import asyncio

from azure.storage.blob.aio import BlobServiceClient

from dicom_core.__main__ import main
from dicom_core.operations.reconcile import ADDED, REJECTED, REMOVED, UNCHANGED, contract_files, reconcile_path, reindex
from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import multipart, new_instance, stow_headers, uids
from tests.environments import server_environment
from tests.faults import failing_from

DEFAULT = "Microsoft.Default"


def path_of(services, data: bytes, partition: str = DEFAULT) -> str:
    return services.layout.instance_path(InstanceKey(partition, *uids(data)[:3]))


async def upload(settings, path: str, data: bytes) -> None:
    async with BlobServiceClient.from_connection_string(settings.lake.connection_string) as blobs:
        await blobs.get_blob_client(settings.file_system, path).upload_blob(data, overwrite=True)


async def remove(settings, path: str) -> None:
    async with BlobServiceClient.from_connection_string(settings.lake.connection_string) as blobs:
        await blobs.get_blob_client(settings.file_system, path).delete_blob()


async def test_a_copied_file_is_indexed_and_a_removed_one_dropped(client, services, settings):
    data = new_instance(modality="MR")
    study, series, sop = uids(data)[:3]
    path = path_of(services, data)
    await upload(settings, path, data)
    assert (await reconcile_path(services, path)).outcome == ADDED
    assert (await reconcile_path(services, path)).outcome == UNCHANGED
    entity = await services.index.get_study(DEFAULT, study)
    assert entity.instance_count == 1
    assert dict(entity.modality_counts) == {"MR": 1}
    feed = (await client.get("/v2/changefeed")).json()
    assert [(e["Action"], e["SopInstanceUid"]) for e in feed] == [("create", sop)]

    await remove(settings, path)
    assert (await reconcile_path(services, path)).outcome == REMOVED
    assert await services.index.get_instance(InstanceKey(DEFAULT, study, series, sop)) is None
    assert await services.index.get_study(DEFAULT, study) is None
    assert [e["Action"] for e in (await client.get("/v2/changefeed")).json()] == ["create", "delete"]


async def test_a_file_whose_uids_differ_from_its_path_is_rejected(services, settings):
    data = new_instance()
    wrong = services.layout.instance_path(InstanceKey(DEFAULT, uids(data)[0], uids(data)[1], "1.2.3.4"))
    await upload(settings, wrong, data)
    result = await reconcile_path(services, wrong)
    assert result.outcome == REJECTED
    assert "not those of its path" in result.message
    assert await services.index.get_instance(InstanceKey(DEFAULT, uids(data)[0], uids(data)[1], "1.2.3.4")) is None
    assert await services.index.get_instance(InstanceKey(DEFAULT, *uids(data)[:3])) is None
    assert [f async for f in services.lake.list(wrong)], "the user's file is left alone"


async def test_a_file_changed_in_the_lake_is_refreshed(client, services, settings):
    data = new_instance(StudyDescription="before")
    study, series, sop = uids(data)[:3]
    body, boundary = multipart([data])
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    await upload(settings, path_of(services, data), new_instance(study=study, series=series, sop=sop, StudyDescription="after"))
    assert (await reconcile_path(services, path_of(services, data))).outcome == "refreshed"
    entity = await services.index.get_study(DEFAULT, study)
    assert entity.instance_count == 1
    assert entity.attributes["00081030"]["Value"] == ["after"]
    assert [e["Action"] for e in (await client.get("/v2/changefeed")).json()] == ["create", "update"]


async def test_reindex_imports_a_copied_archive_and_heals_the_index(client, services, settings):
    study = uids(new_instance())[0]
    copied = [new_instance(study=study) for _ in range(4)]
    for data in copied:
        await upload(settings, path_of(services, data), data)
    await upload(settings, f"{services.layout.health_folder}health-check.txt", b"not dicom")
    await upload(settings, "elsewhere/file.dcm", copied[0])
    wrong = new_instance()
    await upload(settings, services.layout.instance_path(InstanceKey(DEFAULT, study, "1.2", "1.3")), wrong)
    gone = new_instance()
    body, boundary = multipart([gone])
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    await remove(settings, path_of(services, gone))

    files = await contract_files(services)
    assert len(files) == 5  # the health file and the foreign folder are not DICOM data
    seen = []
    summary = await reindex(services, files, progress=seen.append)
    assert (summary.counts["added"], summary.counts["removed"], len(summary.rejected)) == (4, 1, 1), summary
    assert len(seen) == 6
    assert (await services.index.get_study(DEFAULT, study)).instance_count == 4
    assert await services.index.get_study(DEFAULT, uids(gone)[0]) is None
    again = await reindex(services, await contract_files(services))
    assert (again.counts["added"], again.counts["unchanged"]) == (0, 4)
    # Searchable: the feed announces each imported instance once.
    assert len([e for e in (await client.get("/v2/changefeed")).json() if e["Action"] == "create"]) == 5


async def test_reindex_command_prints_a_summary(services, settings, monkeypatch, capsys):
    data = new_instance()
    await upload(settings, path_of(services, data, "imported"), data)
    for name, value in server_environment(settings).items():
        monkeypatch.setenv(name, value)
    assert await asyncio.to_thread(main, ["reindex", "--partition", "imported"]) == 0
    assert "added 1" in capsys.readouterr().out
    assert await services.index.get_instance(InstanceKey("imported", *uids(data)[:3])) is not None


async def test_a_store_interrupted_between_file_and_index_is_healed_by_reconcile(client, services, monkeypatch):
    """An outage after the files: what the store reported failed is either gone or indexed, never phantom."""
    parts = [new_instance() for _ in range(3)]
    monkeypatch.setattr(services.index, "put_instances", failing_from(services.index.put_instances, 1))
    monkeypatch.setattr(services.index, "put_instance", failing_from(services.index.put_instance, 2))
    monkeypatch.setattr(services.lake, "delete", failing_from(services.lake.delete, 1))  # cleanup fails too
    body, boundary = multipart(parts)
    response = await client.post("/v2/studies", content=body, headers=stow_headers(boundary))
    assert response.status_code == 202
    monkeypatch.undo()
    for data in parts:
        await reconcile_path(services, path_of(services, data))
    study_counts = 0
    for data in parts:
        indexed = await services.index.get_instance(InstanceKey(DEFAULT, *uids(data)[:3])) is not None
        on_lake = bool([f async for f in services.lake.list(path_of(services, data))])
        assert indexed == on_lake == True  # noqa: E712 - the lake keeps all three; the index follows it
        study_counts += (await services.index.get_study(DEFAULT, uids(data)[0])).instance_count
    assert study_counts == 3


async def test_reindex_of_a_consistent_archive_changes_nothing_and_says_so(client, services):
    study = uids(new_instance())[0]
    parts = [new_instance(study=study, modality=("CT", "MR")[n % 2]) for n in range(6)]
    body, boundary = multipart(parts)
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    before = await services.changefeed.snapshot()
    summary = await reindex(services, await contract_files(services))
    assert summary.counts[UNCHANGED] == 6
    assert (summary.counts[ADDED], summary.counts[REMOVED], summary.studies_recounted, summary.deletes_finished) == (0, 0, 0, 0)
    # Same ETags in the index, the listing and the feed: no update entries, no create marked replaced.
    assert await services.changefeed.snapshot() == before


async def test_reindex_repairs_counts_and_reports_what_it_changed(client, services):
    from dicom_core.operations.check import check

    parts = [new_instance()]
    study, series = uids(parts[0])[:2]
    parts += [new_instance(study=study, series=series) for _ in range(3)]
    body, boundary = multipart(parts)
    assert (await client.post("/v2/studies", content=body, headers=stow_headers(boundary))).status_code == 200
    # An instance entity removed behind the service's back: the file is an orphan, the counts too high.
    await services.index.delete_instance(InstanceKey(DEFAULT, *uids(parts[0])[:3]))
    assert {violation.invariant for violation in await check(services)} == {2, 3, 5}
    summary = await reindex(services, await contract_files(services))
    assert summary.counts[ADDED] == 1
    assert await check(services) == []
    assert (await services.index.get_study(DEFAULT, study)).instance_count == 4

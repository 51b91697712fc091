"""The analytics Delta tables on Azurite: columns, upserts and deletes from the feed, exactly once, read back
with deltalake and Polars as an analyst would."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from datetime import date

import httpx
import polars as pl
import pydicom
import pytest
from azure.storage.blob import BlobServiceClient as SyncBlobServiceClient
from azure.storage.blob.aio import BlobLeaseClient, BlobServiceClient
from deltalake import DeltaTable

from dicom_core.local.azurite import REPOSITORY_ROOT
from dicom_core.operations.analytics import open_tables, rebuild, sync
from dicom_core.settings import Connection
from dicom_core.storage.analytics_tables import SyncLease, delta_location
from tests.dicom_files import multipart, new_instance, preamble_zeroed, storable_test_files, stow_headers
from tests.environments import server_environment
from tests.server import running_server
from tests.test_store import uids

TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "JPEG2000.dcm", "US1_UNCR.dcm", "emri_small.dcm")


async def store(client, parts, method="POST"):
    body, boundary = multipart(parts)
    response = await client.request(method, "/v2/studies", content=body, headers=stow_headers(boundary))
    assert response.status_code == 200, response.text
    return response


def read(tables, name: str):
    """A whole table, read back with deltalake."""
    return DeltaTable(tables.uri(name), storage_options=tables.location.storage_options).to_pyarrow_table()


def rows_by_sop(table) -> dict[str, dict]:
    return {row["sopInstanceUid"]: row for row in table.to_pylist()}


def _date(value) -> date | None:
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])) if value else None
    except ValueError:
        return None


def expected_columns(dataset: pydicom.Dataset) -> dict:
    """What the instances table must say about a data set, computed with pydicom alone."""

    def text(keyword):
        value = dataset.get(keyword)
        return str(value) if value not in (None, "") else None

    def number(keyword, kind):
        value = dataset.get(keyword)
        if value in (None, ""):
            return None
        return kind(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)

    return {
        "patientId": text("PatientID"),
        "patientName": text("PatientName"),
        "patientSex": text("PatientSex"),
        "patientBirthDate": _date(text("PatientBirthDate")),
        "accessionNumber": text("AccessionNumber"),
        "studyDate": _date(text("StudyDate")),
        "studyTime": text("StudyTime"),
        "studyDescription": text("StudyDescription"),
        "modality": text("Modality"),
        "seriesDescription": text("SeriesDescription"),
        "seriesNumber": number("SeriesNumber", int),
        "instanceNumber": number("InstanceNumber", int),
        "bodyPartExamined": text("BodyPartExamined"),
        "manufacturer": text("Manufacturer"),
        "sliceThickness": number("SliceThickness", float),
        "rows": number("Rows", int),
        "columns": number("Columns", int),
        "sopClassUid": str(dataset.SOPClassUID),
        "transferSyntaxUid": str(dataset.file_meta.TransferSyntaxUID),
        "numberOfFrames": int(dataset.get("NumberOfFrames", 1) or 1),
    }


async def test_every_column_for_pydicom_test_files_read_with_deltalake_and_polars(client, services):
    files = [path for path in storable_test_files() if path.name in TEST_FILES]
    assert len(files) == len(TEST_FILES)
    datasets = {}
    for path in files:
        data = path.read_bytes()
        await store(client, [data])
        datasets[uids(data)[2]] = (pydicom.dcmread(io.BytesIO(data)), data)
    result = await sync(services)
    assert result.entries == len(files)
    tables = await open_tables(services)

    instances = rows_by_sop(read(tables, "instances"))
    assert set(instances) == set(datasets)
    for sop, (dataset, data) in datasets.items():
        row = instances[sop]
        for column, value in expected_columns(dataset).items():
            assert row[column] == value, (dataset.filename, column)
        assert row["partitionName"] == "Microsoft.Default"
        assert (row["studyInstanceUid"], row["seriesInstanceUid"]) == (dataset.StudyInstanceUID, dataset.SeriesInstanceUID)
        assert row["fileSize"] == len(data)
        assert await services.lake.read(row["filePath"]) == preamble_zeroed(data)  # filePath opens the file
        assert row["storedAt"] is not None and row["lastChangedAt"] >= row["storedAt"]
        metadata = json.loads(row["metadata_string"])
        assert metadata["00080018"]["Value"] == [sop]
        assert "7FE00010" not in metadata and "BulkDataURI" not in row["metadata_string"]

    # The same table through Polars, and the cohort question of the docs.
    uri, options = tables.uri("instances"), tables.location.storage_options
    frame = pl.read_delta(uri, storage_options=options)
    assert frame.height == len(files)
    assert frame.schema["studyDate"] == pl.Date and frame.schema["sliceThickness"] == pl.Float64
    cohort = frame.filter((pl.col("modality") == "CT") & (pl.col("sliceThickness") <= 5.0)).select("filePath")
    ct = [sop for sop, (dataset, _) in datasets.items() if dataset.Modality == "CT" and float(dataset.SliceThickness) <= 5]
    assert sorted(cohort["filePath"]) == sorted(instances[sop]["filePath"] for sop in ct)

    studies = read(tables, "studies").to_pylist()
    assert {row["studyInstanceUid"] for row in studies} == {dataset.StudyInstanceUID for dataset, _ in datasets.values()}
    for row in studies:
        members = [dataset for dataset, _ in datasets.values() if dataset.StudyInstanceUID == row["studyInstanceUid"]]
        assert row["numberOfStudyRelatedInstances"] == len(members)
        assert row["modalitiesInStudy"] == sorted({dataset.Modality for dataset in members})
    series = read(tables, "series").to_pylist()
    assert sum(row["numberOfSeriesRelatedInstances"] for row in series) == len(files)
    for name in ("instances", "series", "studies"):
        protocol = DeltaTable(tables.uri(name), storage_options=tables.location.storage_options).protocol()
        assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
        assert not protocol.reader_features and not protocol.writer_features


async def test_delete_and_put_replace_are_reflected_and_series_and_study_rows_follow(client, services):
    kept, replaced, deleted = new_instance(), new_instance(), new_instance(modality="MR")
    study = uids(kept)[0]
    same_study = new_instance(study=study, modality="US")
    await store(client, [kept, replaced, deleted, same_study])
    await sync(services)
    study_r, series_r, sop_r = uids(replaced)[:3]
    await store(
        client,
        [new_instance(study=study_r, series=series_r, sop=sop_r, SeriesDescription="replaced", SliceThickness="0.625")],
        "PUT",
    )
    study_d = uids(deleted)[0]
    assert (await client.delete(f"/v2/studies/{study_d}")).status_code == 204
    assert (await client.delete(f"/v2/studies/{study}/series/{uids(same_study)[1]}")).status_code == 204
    result = await sync(services)
    assert result.entries == 3  # the update and the two deletes

    tables = await open_tables(services)
    instances = rows_by_sop(read(tables, "instances"))
    assert set(instances) == {uids(kept)[2], sop_r}
    assert (instances[sop_r]["seriesDescription"], instances[sop_r]["sliceThickness"]) == ("replaced", 0.625)
    studies = {row["studyInstanceUid"]: row for row in read(tables, "studies").to_pylist()}
    assert set(studies) == {study, study_r}
    assert (studies[study]["numberOfStudyRelatedInstances"], studies[study]["modalitiesInStudy"]) == (1, ["CT"])
    series = {row["seriesInstanceUid"] for row in read(tables, "series").to_pylist()}
    assert series == {uids(kept)[1], series_r}


async def test_two_syncs_add_nothing_and_a_rebuild_gives_the_same_rows(client, services):
    await store(client, [new_instance() for _ in range(3)])
    first = await sync(services, batch_size=2)
    assert (first.entries, first.position) == (3, 3)
    tables = await open_tables(services)
    versions = [status.version for status in await tables.status()]
    again = await sync(services)
    assert (again.entries, again.position) == (0, 3)
    assert [status.version for status in await tables.status()] == versions
    before = {name: sorted(row["filePath"] for row in read(tables, name).to_pylist()) for name in ("instances",)}

    rebuilt = await rebuild(services, batch_size=2)
    assert (rebuilt.entries, rebuilt.position, rebuilt.rows["instances"]) == (3, 3, 3)
    assert sorted(row["filePath"] for row in read(tables, "instances").to_pylist()) == before["instances"]
    assert (await tables.applied_sequences()) == {"instances": 3, "series": 3, "studies": 3}
    assert (await sync(services)).entries == 0


@pytest.mark.parametrize("when, commit", [("after", 1), ("after", 4), ("before", 4)])
async def test_a_kill_at_a_delta_commit_neither_loses_nor_doubles_a_change(
    client, services, settings, azurite_server, when, commit
):
    """SIGKILL the sync process at its n-th commit (3 per batch: instances, series, studies), then sync again."""
    parts = [new_instance() for _ in range(5)]
    await store(client, parts)
    await client.delete(f"/v2/studies/{uids(parts[0])[0]}")  # entry 6: a delete in the second batch
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.analytics_crash", when, str(commit), "3"],
        cwd=REPOSITORY_ROOT,
        env=server_environment(settings),
        capture_output=True,
    )
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    tables = await open_tables(services)
    landed = commit if when == "after" else commit - 1
    assert (await tables.applied_sequences())["instances"] == (3 if landed >= 1 else 0) + (3 if landed >= 4 else 0)

    # The dead process still holds the lease: a sync now skips its turn, as another host would.
    assert (await sync(services)).busy
    async with BlobServiceClient.from_connection_string(azurite_server.connection_string) as blobs:
        lock = blobs.get_blob_client(settings.file_system, f"{services.layout.analytics_folder}sync.lock")
        await BlobLeaseClient(lock).break_lease(lease_break_period=0)  # what its expiry does a minute later
    result = await sync(services)
    assert not result.busy and result.position == 6
    instances = read(tables, "instances").to_pylist()
    assert sorted(row["sopInstanceUid"] for row in instances) == sorted(uids(part)[2] for part in parts[1:])
    for name, count in (("series", 4), ("studies", 4)):
        assert read(tables, name).num_rows == count
    assert (await tables.applied_sequences()) == {"instances": 6, "series": 6, "studies": 6}


async def test_one_writer_at_a_time(client, services, settings, azurite_server):
    await store(client, [new_instance()])
    async with BlobServiceClient.from_connection_string(azurite_server.connection_string) as blobs:
        other_host = SyncLease(blobs, settings.file_system, services.layout.analytics_folder)
        await other_host.acquire()
        assert (await sync(services)).busy
        await other_host.release()
    assert (await sync(services)).entries == 1


async def test_compaction_and_vacuum_keep_every_row(client, services):
    await store(client, [new_instance() for _ in range(5)])
    await sync(services, batch_size=1)
    tables = await open_tables(services)
    files = {status.name: status.files for status in await tables.status()}
    assert files["instances"] == 5
    compacted = await tables.maintain(max_files=2, retention_hours=0)
    assert compacted["instances"] == 5
    statuses = {status.name: status for status in await tables.status()}
    assert (statuses["instances"].files, statuses["instances"].rows, statuses["instances"].applied_sequence) == (1, 5, 5)
    assert pl.read_delta(tables.uri("instances"), storage_options=tables.location.storage_options).height == 5
    assert len(DeltaTable(tables.uri("instances"), storage_options=tables.location.storage_options).history()) > 5


async def test_analytics_is_a_reserved_partition_name(client, services):
    body, boundary = multipart([new_instance()])
    response = await client.post("/v2/partitions/analytics/studies", content=body, headers=stow_headers(boundary))
    assert response.status_code == 400
    assert "reserved" in response.json()["message"] and "analytics" in response.json()["message"]
    assert services.layout.parse_instance_path(f"{services.layout.analytics_folder}1/2/3.dcm") is None


async def test_delta_locations_from_the_dicom_lake_setting():
    production = Connection(
        connection_string="DefaultEndpointsProtocol=https;AccountName=lake;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    )
    hns = await delta_location(production, "dicom", "AHDS/w/dicom/s/analytics/", hierarchical=True)
    assert hns.base_uri == "abfss://dicom@lake.dfs.core.windows.net/AHDS/w/dicom/s/analytics"
    assert hns.storage_options == {"account_name": "lake", "account_key": "a2V5"}
    flat = await delta_location(production, "dicom", "AHDS/w/dicom/s/analytics/", hierarchical=False)
    assert flat.base_uri == "az://dicom/AHDS/w/dicom/s/analytics"
    emulator = await delta_location(Connection(connection_string="UseDevelopmentStorage=true"), "d", "a", hierarchical=False)
    assert emulator.storage_options["azure_storage_endpoint"] == "http://127.0.0.1:10000/devstoreaccount1"
    assert emulator.storage_options["allow_http"] == "true"


def test_the_running_server_catches_up_by_itself(settings, tmp_path):
    parts = [new_instance(modality="CT", SliceThickness="1.0") for _ in range(3)]
    body, boundary = multipart(parts)
    with running_server(settings, tmp_path / "server.log", {"DICOM_ANALYTICS_INTERVAL_SECONDS": "1"}) as (url, _):
        response = httpx.post(f"{url}/studies", content=body, headers=stow_headers(boundary), timeout=60)
        assert response.status_code == 200
        location = asyncio.run(
            delta_location(
                settings.lake,
                settings.file_system,
                f"AHDS/{settings.workspace}/dicom/{settings.service}/analytics",
                hierarchical=False,
            )
        )
        uri = f"{location.base_uri}/instances"
        deadline = time.monotonic() + 120
        while True:  # waits for the server's own timer: no sync is called here
            if DeltaTable.is_deltatable(uri, storage_options=location.storage_options):
                frame = pl.read_delta(uri, storage_options=location.storage_options)
                if frame.height == len(parts):
                    break
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    cohort = frame.filter((pl.col("modality") == "CT") & (pl.col("sliceThickness") <= 1.25))
    assert sorted(cohort["sopInstanceUid"]) == sorted(uids(part)[2] for part in parts)
    stored = {uids(part)[2]: preamble_zeroed(part) for part in parts}
    with SyncBlobServiceClient.from_connection_string(settings.lake.connection_string) as blobs:
        for sop, path in cohort.select("sopInstanceUid", "filePath").iter_rows():
            assert blobs.get_blob_client(settings.file_system, path).download_blob().readall() == stored[sop]


async def test_the_command_line_rebuilds_and_syncs(client, services, settings):
    parts = [new_instance() for _ in range(3)]
    await store(client, parts)

    def command(*arguments: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "dicom_core", "analytics", *arguments],
            cwd=REPOSITORY_ROOT,
            env=server_environment(settings),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "3 instances applied (3 instances rows, 3 series rows, 3 studies rows); current to change 3" in command(
        "rebuild", "--batch-size", "2"
    )
    assert "0 changes applied" in command("sync")
    assert "analytics maintain" in command("maintain")
    tables = await open_tables(services)
    assert sorted(read(tables, "instances")["sopInstanceUid"].to_pylist()) == sorted(uids(part)[2] for part in parts)

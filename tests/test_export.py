"""Export (POST /v2/export) to a second container of the test session's Azurite, addressed by a SAS URL.

The operations worker runs the export (``run_operations``, what the timer and the local
server's background task call); what arrives is read back with a client of the test's own,
and the service's lake requests are counted to show that files are copied server-side.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from dicom_core.events import run_operations
from dicom_core.local.azurite import ACCOUNT_KEY, ACCOUNT_NAME
from dicom_core.operations.export import MAX_IDENTIFIERS, ExportJob
from dicom_core.services import Services
from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import new_instance
from tests.test_extended_query_tags import fresh, operation
from tests.test_search import store

DEFAULT = "Microsoft.Default"
WRITE = ContainerSasPermissions(read=True, write=True, create=True, add=True, list=True)


def container_url(azurite_server, name: str, permission: ContainerSasPermissions = WRITE) -> str:
    """The URL of container ``name`` with an account-key SAS, as a research group would give it."""
    expiry = datetime.now(UTC) + timedelta(hours=1)
    sas = generate_container_sas(ACCOUNT_NAME, name, account_key=ACCOUNT_KEY, permission=permission, expiry=expiry)
    return f"http://127.0.0.1:{azurite_server.blob_port}/{ACCOUNT_NAME}/{name}?{sas}"


@pytest.fixture
async def destination(azurite_server):
    """A fresh container of the research group's, and a client of the test's own to read it."""
    blobs = BlobServiceClient.from_connection_string(azurite_server.connection_string)
    container = blobs.get_container_client(f"export{uuid.uuid4().hex[:10]}")
    await container.create_container()
    yield container
    await container.delete_container()
    await blobs.close()


def export_body(values: list[str], url: str, **settings) -> dict:
    return {
        "source": {"type": "identifiers", "settings": {"values": values}},
        "destination": {"type": "azureblob", "settings": {"blobContainerUri": url, **settings}},
    }


async def start(client, body: dict, prefix: str = "/v2") -> str:
    response = await client.post(f"{prefix}/export", json=body)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["href"] == f"http://testserver/v2/operations/{created['id']}"
    return created["id"]


async def arrived(container, prefix: str) -> dict[str, bytes]:
    names = [blob.name async for blob in container.list_blobs(name_starts_with=prefix)]
    return {name: await (await container.download_blob(name)).readall() for name in names}


async def error_lines(container, operation_id: str) -> list[dict]:
    data = await (await container.download_blob(f"{operation_id}/errors.log")).readall()
    return [json.loads(line) for line in data.decode().splitlines()]


async def lake_file(services: Services, study: str, series: str, sop: str, partition: str = DEFAULT) -> bytes:
    return await services.lake.read(services.layout.instance_path(InstanceKey(partition, study, series, sop)))


def uids(study: str, series: str, count: int) -> list[tuple[str, str, str]]:
    return [(study, series, f"{series}.{n}") for n in range(1, count + 1)]


async def test_studies_series_and_instances_are_copied_server_side_and_missing_ones_logged(
    client, services, azurite_server, destination
):
    files = {
        key: new_instance(study=key[0], series=key[1], sop=key[2])
        for key in uids("1.2.1", "1.2.1.1", 3) + uids("1.2.1", "1.2.1.2", 2) + uids("1.2.2", "1.2.2.1", 2)
        + uids("1.2.2", "1.2.2.2", 1) + uids("1.2.3", "1.2.3.1", 2)
    }  # fmt: skip
    await store(client, list(files.values()))
    url = container_url(azurite_server, destination.container_name)
    values = ["1.2.1", "1.2.2/1.2.2.1", "1.2.3/1.2.3.1/1.2.3.1.2", "1.2.9", "1.2.1/1.2.1.9", "1.2.3/1.2.3.1/1.2.3.1.9"]
    operation_id = await start(client, export_body(values, url))
    assert (await operation(client, operation_id))["status"] == "notStarted"

    services.statistics.reset()
    assert await run_operations(services, owner="exporter") == 1
    copies = 5 + 2 + 1
    # Per file one Copy Blob, never a read of it; besides: errors.log created, one listing per
    # identifier with instances, one append of the step's error lines (one step: 8 files, batches of 100).
    assert services.statistics.lake_requests == copies + 1 + 3 + 1

    state = await operation(client, operation_id)
    assert (state["status"], state["percentComplete"], state["type"]) == ("completed", 100, "export")
    href = f"{destination.url}/{operation_id}/errors.log"
    assert state["results"] == {"exported": copies, "skipped": 3, "errorHref": href}
    assert "sig=" not in json.dumps(state)

    expected = {  # the files as the lake holds them (the store blanks the preamble)
        f"{operation_id}/results/{study}/{series}/{sop}.dcm": await lake_file(services, study, series, sop)
        for study, series, sop in files
        if study == "1.2.1" or series == "1.2.2.1" or sop == "1.2.3.1.2"
    }
    assert await arrived(destination, f"{operation_id}/results/") == expected
    lines = await error_lines(destination, operation_id)
    assert sorted(line["Identifier"] for line in lines) == ["1.2.1/1.2.1.9", "1.2.3/1.2.3.1/1.2.3.1.9", "1.2.9"]
    assert {line["Error"] for line in lines} == {"not found"} and all("Timestamp" in line for line in lines)


async def test_the_partition_form_exports_from_its_partition(client, services, azurite_server, destination):
    await store(client, [new_instance(study="1.3.1", series="1.3.1.1", sop="1.3.1.1.1")], "/v2/partitions/research/studies")
    url = container_url(azurite_server, destination.container_name)
    operation_id = await start(client, export_body(["1.3.1"], url), "/v2/partitions/research")
    other = await start(client, export_body(["1.3.1"], url))  # not in Microsoft.Default
    await run_operations(services, owner="exporter")
    assert (await operation(client, operation_id))["results"]["exported"] == 1
    assert (await operation(client, other))["results"] == {
        "exported": 0, "skipped": 1, "errorHref": f"{destination.url}/{other}/errors.log"
    }  # fmt: skip
    assert list(await arrived(destination, other)) == [f"{other}/errors.log"]


async def test_a_step_redone_after_a_crash_copies_nothing_twice(client, services, settings, azurite_server, destination):
    await store(client, [new_instance(study="1.4.1", series="1.4.1.1", sop=f"1.4.1.1.{n}") for n in range(1, 6)])
    url = container_url(azurite_server, destination.container_name)
    operation_id = await start(client, export_body(["1.4.1"], url))
    worker = await Services.open(fresh(settings, batch_size=2))
    try:
        record = await worker.operations.get(operation_id)
        first = await ExportJob().step(worker, record)
        assert first.checkpoint["after"] == ["1.4.1.1", "1.4.1.1.2"] and first.checkpoint["results"]["exported"] == 2
        # The worker died before saving that checkpoint: the next one redoes the step from the same state.
        worker.statistics.reset()
        again = await ExportJob().step(worker, record)
        assert again.checkpoint == first.checkpoint
        assert worker.statistics.lake_requests == 2  # errors.log created again, one listing: no copy
        assert await run_operations(worker, owner="second") == 1
    finally:
        await worker.close()
    state = await operation(client, operation_id)
    assert (state["status"], state["results"]["exported"], state["results"]["skipped"]) == ("completed", 5, 0)
    assert len(await arrived(destination, f"{operation_id}/results/")) == 5


@pytest.mark.parametrize(
    ("permission", "created", "words"),
    [
        (ContainerSasPermissions(read=True, list=True), True, "may not write"),
        (WRITE, False, "does not exist"),
    ],
)
async def test_a_destination_that_refuses_writes_fails_the_operation_saying_why(
    client, services, azurite_server, permission, created, words
):
    await store(client, [new_instance(study="1.5.1", series="1.5.1.1", sop="1.5.1.1.1")])
    blobs = BlobServiceClient.from_connection_string(azurite_server.connection_string)
    name = f"refuse{uuid.uuid4().hex[:10]}"
    if created:
        await blobs.get_container_client(name).create_container()
    try:
        operation_id = await start(client, export_body(["1.5.1"], container_url(azurite_server, name, permission)))
        services.statistics.reset()
        await run_operations(services, owner="exporter")
        state = await operation(client, operation_id)
        assert state["status"] == "failed" and words in state["errors"][0], state
        assert "sig=" not in json.dumps(state)
        assert services.statistics.lake_requests == 1  # the first write was refused: nothing else tried
    finally:
        if created:
            await blobs.get_container_client(name).delete_container()
        await blobs.close()


SAS_URL = "http://127.0.0.1:10000/devstoreaccount1/research?sv=2024&sig=abc"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "JSON object"),
        ({"source": {"type": "identifiers", "settings": {"values": ["1.2"]}}}, "no 'destination'"),
        (export_body(["1.2"], SAS_URL) | {"extra": 1}, "unknown field 'extra'"),
        ({**export_body(["1.2"], SAS_URL), "source": {"type": "query", "settings": {}}}, "source.type"),
        ({**export_body(["1.2"], SAS_URL), "destination": {"type": "s3", "settings": {}}}, "destination.type"),
        (export_body([], SAS_URL), "non-empty"),
        (export_body(["1.2/3.4/5.6/7.8"], SAS_URL), "more than three"),
        (export_body(["1.2", "1.2/abc"], SAS_URL), "values[1]: 'abc' is not a UID"),
        (export_body(["1.2//3"], SAS_URL), "is not a UID"),
        (export_body([12], SAS_URL), "not a string"),
        (export_body(["1.2"] * (MAX_IDENTIFIERS + 1), SAS_URL), f"at most {MAX_IDENTIFIERS}"),
        (export_body(["1.2"], "ftp://account.blob.core.windows.net/c?sig=x"), "URL of a blob container"),
        (export_body(["1.2"], "https://account.blob.core.windows.net/c/blob.dcm?sig=x"), "URL of a blob container"),
        (export_body(["1.2"], "https://account.blob.core.windows.net/c"), "give a SAS"),
        (export_body(["1.2"], "https://account.blob.core.windows.net/c", useManagedIdentity=False), "give a SAS"),
        (export_body(["1.2"], SAS_URL, useManagedIdentity=True), "give a SAS"),
        (export_body(["1.2"], SAS_URL, useManagedIdentity="yes"), "true or false"),
    ],
)
async def test_a_body_that_cannot_be_exported_is_refused_saying_why(client, services, body, words):
    response = await client.post("/v2/export", json=body)
    assert response.status_code == 400, response.text
    assert words in response.text and "sig=abc" not in response.text
    assert await services.operations.pending() == []


async def test_a_file_that_cannot_be_copied_is_a_line_of_errors_log_and_the_rest_is_exported(
    client, services, settings, azurite_server, destination
):
    await store(client, [new_instance(study="1.6.1", series="1.6.1.1", sop=f"1.6.1.1.{n}") for n in range(1, 4)])
    await store(client, [new_instance(study="1.6.2", series="1.6.2.1", sop="1.6.2.1.1")])
    lost = services.layout.instance_path(InstanceKey(DEFAULT, "1.6.1", "1.6.1.1", "1.6.1.1.2"))
    assert await services.lake.delete(lost)  # indexed, but its file is gone
    operation_id = await start(client, export_body(["1.6.1", "1.6.2"], container_url(azurite_server, destination.container_name)))
    worker = await Services.open(fresh(settings, batch_size=2))  # the first step ends inside 1.6.1
    try:
        assert await run_operations(worker, owner="exporter") == 1
    finally:
        await worker.close()
    state = await operation(client, operation_id)
    assert state["results"]["exported"] == 3 and state["results"]["skipped"] == 1
    [line] = await error_lines(destination, operation_id)
    assert line["Identifier"] == "1.6.1/1.6.1.1/1.6.1.1.2" and "source file is missing" in line["Error"]
    assert sorted(await arrived(destination, f"{operation_id}/results/")) == [
        f"{operation_id}/results/1.6.1/1.6.1.1/1.6.1.1.1.dcm",
        f"{operation_id}/results/1.6.1/1.6.1.1/1.6.1.1.3.dcm",
        f"{operation_id}/results/1.6.2/1.6.2.1/1.6.2.1.1.dcm",
    ]

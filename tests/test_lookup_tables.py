"""The two lookup tables: instance entries apart from study and series ones, and the move of an older archive's.

Archives from before the split kept every lookup entry in ``{prefix}lookup``. The tests build
one the way such a version left it (the instance entries moved back by hand, no marker), then
open the service over it as a new process would.
"""

from __future__ import annotations

import httpx
import pytest
from azure.data.tables.aio import TableClient
from pydicom.uid import generate_uid

from dicom_core.dicom.levels import Level
from dicom_core.events import run_operations
from dicom_core.http.app import create_app
from dicom_core.operations.check import check
from dicom_core.operations.lookup_move import MOVE_OPERATION_ID, start_if_needed
from dicom_core.services import Services
from dicom_core.settings import DEFAULT_PARTITION, Settings
from dicom_core.storage.lookup import partition_key
from tests.dicom_files import new_instance, uids
from tests.operations_crash import kill_operations_worker
from tests.test_search import store

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def tables(settings: Settings) -> tuple[TableClient, TableClient]:
    """Clients of ``{prefix}lookup`` and ``{prefix}instancelookup`` outside the service, to see where entries are."""
    connection = settings.index.connection_string
    return (
        TableClient.from_connection_string(connection, f"{settings.table_prefix}lookup"),
        TableClient.from_connection_string(connection, f"{settings.table_prefix}instancelookup"),
    )


async def keys(table: TableClient) -> list[tuple[str, str]]:
    return sorted([(e["PartitionKey"], e["RowKey"]) async for e in table.list_entities(select=["PartitionKey", "RowKey"])])


def entity(entry: tuple[str, str]) -> dict[str, str]:
    return {"PartitionKey": entry[0], "RowKey": entry[1]}


def instance_level(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [entry for entry in entries if "|instance|" in entry[0]]


async def make_legacy(settings: Settings) -> list[tuple[str, str]]:
    """Leave the archive as versions before the split did: every instance entry in the lookup table, no marker."""
    lookup, instance_lookup = tables(settings)
    async with lookup, instance_lookup:
        entries = await keys(instance_lookup)
        for pk, rk in entries:
            if "|instance|" in pk:
                await lookup.upsert_entity(entity((pk, rk)))
            await instance_lookup.delete_entity(pk, rk)  # the marker too
    return instance_level(entries)


async def find(services: Services, params: dict) -> list[str]:
    """SOP Instance UIDs that an instance search over ``services`` returns (its own app, as another process)."""
    app = create_app(services.settings, services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        response = await http.get("/v2/instances", params=params)
    assert response.status_code == 200, response.text
    return [match["00080018"]["Value"][0] for match in response.json()]


async def archive(client) -> list[bytes]:
    """Three CT instances in two studies."""
    study = generate_uid()
    instances = [new_instance(study=study, InstanceNumber=n) for n in (1, 2)] + [new_instance(InstanceNumber=3)]
    await store(client, instances)
    return instances


async def test_a_new_archive_keeps_instance_entries_apart_from_study_and_series_entries(client, services, settings):
    await archive(client)
    lookup, instance_lookup = tables(settings)
    async with lookup, instance_lookup:
        upper, lower = await keys(lookup), await keys(instance_lookup)
    assert upper and instance_level(upper) == []
    assert {pk.split("|")[1] for pk, _ in upper} == {"study", "series"}
    # SOPInstanceUID, SOPClassUID and InstanceNumber of each of the three, and the marker of a complete table.
    assert len(instance_level(lower)) == 9 and ("layout", "complete") in lower
    assert await services.index.lookup.instances_complete()


async def test_an_archive_from_before_the_split_finds_its_instances_then_moves_them(client, services, settings):
    instances = await archive(client)
    sops = sorted(uids(data)[2] for data in instances)
    services.statistics.reset()
    before = await find(services, {"SOPClassUID": CT_IMAGE})
    fresh_requests = services.statistics.requests
    moved = await make_legacy(settings)
    older = await Services.open(settings)
    try:
        assert not await older.index.lookup.instances_complete()
        assert await find(older, {"SOPInstanceUID": sops[1]}) == [sops[1]]
        assert sorted(await find(older, {"SOPClassUID": CT_IMAGE})) == sops == sorted(before)
        # An entry in both tables, as a move cut off between its copy and its delete leaves it, is one match.
        _, instance_lookup = tables(settings)
        async with instance_lookup:
            await instance_lookup.upsert_entity(entity(moved[0]))
        assert sorted(await find(older, {"SOPClassUID": CT_IMAGE})) == sops

        assert await run_operations(older) == 1
        state = await older.operations.get(MOVE_OPERATION_ID)
        assert state is not None and state.status == "completed", state
        assert await where_entries_are(settings) == ([], moved)
        older.statistics.reset()
        assert await find(older, {"SOPClassUID": CT_IMAGE}) == before
        assert older.statistics.requests == fresh_requests  # one table again: the requests of a new archive
        older.statistics.reset()
        await start_if_needed(older)
        assert older.statistics.requests == 0
    finally:
        await older.close()
    reopened = await Services.open(settings)
    try:
        assert await reopened.index.lookup.instances_complete()
        assert await run_operations(reopened) == 0
    finally:
        await reopened.close()
    assert await check(services) == []


async def where_entries_are(settings: Settings) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The instance entries in the lookup table and in the instance lookup table."""
    lookup, instance_lookup = tables(settings)
    async with lookup, instance_lookup:
        return instance_level(await keys(lookup)), instance_level(await keys(instance_lookup))


async def test_clearing_and_removing_entries_reach_those_still_in_the_lookup_table(client, services, settings):
    instances = await archive(client)
    moved = await make_legacy(settings)
    pk = partition_key(DEFAULT_PARTITION, Level.INSTANCE, "SOPInstanceUID")
    _, instance_lookup = tables(settings)
    async with instance_lookup:  # one of them written since, where new entries go
        await instance_lookup.upsert_entity(entity(next(entry for entry in moved if entry[0] == pk)))
    older = await Services.open(settings)
    try:
        assert await older.index.lookup.clear(pk) == 3 + 1  # a deleted extended tag's entries go this way
        assert await find(older, {"SOPInstanceUID": uids(instances[0])[2]}) == []
        await older.index.lookup.remove(moved)  # a bulk update's old values go this way
    finally:
        await older.close()
    assert await where_entries_are(settings) == ([], [])


@pytest.mark.parametrize("kill_at", ["Lookup.delete:1", "Lookup.first_page:2"])
async def test_a_move_killed_midway_is_finished_by_the_next_worker(client, services, settings, kill_at):
    """SIGKILL after a page's copy and before its delete, and between two pages: the next worker completes the move."""
    await store(client, [new_instance(patient_id=f"P{n % 3}", InstanceNumber=n) for n in range(40)])
    moved = await make_legacy(settings)
    kill_operations_worker(settings, kill_at)
    survivor = await Services.open(settings)
    try:
        assert not await survivor.index.lookup.instances_complete()
        assert len(await find(survivor, {"SOPClassUID": CT_IMAGE, "limit": "100"})) == 40
        assert await run_operations(survivor, owner="survivor") == 1
        assert (await survivor.operations.get(MOVE_OPERATION_ID)).status == "completed"
        assert len(await find(survivor, {"SOPClassUID": CT_IMAGE, "limit": "100"})) == 40
    finally:
        await survivor.close()
    assert await where_entries_are(settings) == ([], moved)
    assert await check(services) == []

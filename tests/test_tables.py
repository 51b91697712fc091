"""Entity-group transactions (storage/tables.py ``Table.submit``) against Azurite: all or nothing, as the SDK reports them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableTransactionError, UpdateMode

from dicom_core.settings import Connection
from dicom_core.storage import connections
from dicom_core.storage.tables import RequestStatistics, Table


@pytest.fixture
async def table(settings):
    statistics = RequestStatistics()
    service = connections.table_service(settings.index, statistics)
    created = Table(service, f"t{uuid.uuid4().hex[:20]}")
    await created.prepare()
    statistics.reset()
    created.statistics = statistics
    yield created
    await created.client.delete_table()
    await service.close()


async def test_a_transaction_writes_every_operation_with_its_types_and_returns_their_etags(table):
    now = datetime.now(UTC)
    answers = await table.submit(
        [
            ("upsert", {"PartitionKey": "p", "RowKey": "a", "Data": b"\x00\x01", "N": 7, "Time": now, "Name": "Dupont^Jé"}),
            ("create", {"PartitionKey": "p", "RowKey": "it's"}),
        ]
    )
    stored = await table.client.get_entity("p", "a")
    other = await table.client.get_entity("p", "it's")
    assert [answer["etag"] for answer in answers] == [stored.metadata["etag"], other.metadata["etag"]]
    assert (stored["Data"], stored["N"], stored["Name"]) == (b"\x00\x01", 7, "Dupont^Jé")
    assert abs((stored["Time"] - now).total_seconds()) < 0.001
    assert (table.statistics.requests, table.statistics.entities_written) == (1 + 2, 2)  # the transaction and two reads


async def test_a_failed_operation_fails_the_whole_transaction_with_the_sdks_error(table):
    await table.submit([("create", {"PartitionKey": "p", "RowKey": "a", "Value": 1})])
    stale = {"etag": "W/\"datetime'2020-01-01T00%3A00%3A00.0000000Z'\"", "match_condition": MatchConditions.IfNotModified}
    with pytest.raises(TableTransactionError) as conflict:
        await table.submit(
            [
                ("create", {"PartitionKey": "p", "RowKey": "b"}),
                ("update", {"PartitionKey": "p", "RowKey": "a", "Value": 2}, {"mode": UpdateMode.REPLACE, **stale}),
            ]
        )
    failed = conflict.value
    assert (failed.status_code, failed.error_code, failed.index) == (412, "UpdateConditionNotSatisfied", 1)
    with pytest.raises(TableTransactionError) as exists:
        await table.submit([("create", {"PartitionKey": "p", "RowKey": "c"}), ("create", {"PartitionKey": "p", "RowKey": "a"})])
    assert (exists.value.status_code, exists.value.error_code, exists.value.index) == (409, "EntityAlreadyExists", 1)
    rows = [entity["RowKey"] async for entity in table.client.list_entities()]
    assert rows == ["a"]  # neither b nor c: nothing of a failed transaction is written
    assert (await table.client.get_entity("p", "a"))["Value"] == 1


async def test_deletes_in_a_transaction_remove_their_entities(table):
    await table.submit([("create", {"PartitionKey": "p", "RowKey": str(n)}) for n in range(100)])
    assert await table.submit([("delete", {"PartitionKey": "p", "RowKey": str(n)}) for n in range(100)]) == [{}] * 100
    assert [entity async for entity in table.client.list_entities()] == []


async def test_merge_keeps_other_properties_replace_drops_them_and_conditions_are_sent(table):
    await table.submit([("create", {"PartitionKey": "p", "RowKey": "a", "Kept": 1, "Changed": 1})])
    await table.submit([("upsert", {"PartitionKey": "p", "RowKey": "a", "Changed": 2})])  # merge, the SDK's default
    entity = await table.client.get_entity("p", "a")
    assert (entity["Kept"], entity["Changed"]) == (1, 2)
    replace = {"mode": UpdateMode.REPLACE}
    [replaced] = await table.submit([("update", {"PartitionKey": "p", "RowKey": "a", "Changed": 3}, replace)])
    entity = await table.client.get_entity("p", "a")
    assert ("Kept" in entity, entity["Changed"], entity.metadata["etag"]) == (False, 3, replaced["etag"])

    on_version = {"etag": replaced["etag"], "match_condition": MatchConditions.IfNotModified}
    [merged] = await table.submit([("update", {"PartitionKey": "p", "RowKey": "a", "Changed": 4}, on_version)])
    with pytest.raises(TableTransactionError) as stale:  # the ETag it had before the merge
        await table.submit([("delete", {"PartitionKey": "p", "RowKey": "a"}, on_version)])
    assert (stale.value.status_code, stale.value.error_code) == (412, "UpdateConditionNotSatisfied")
    with pytest.raises(TableTransactionError) as missing:  # an update without an ETag still needs the entity (If-Match: *)
        await table.submit([("update", {"PartitionKey": "p", "RowKey": "gone", "Changed": 1})])
    assert missing.value.status_code == 404
    with pytest.raises(ValueError, match="one PartitionKey"):
        await table.submit([("create", {"PartitionKey": "p", "RowKey": "b"}), ("create", {"PartitionKey": "q", "RowKey": "c"})])
    current = {"etag": merged["etag"], "match_condition": MatchConditions.IfNotModified}
    assert await table.submit([("delete", {"PartitionKey": "p", "RowKey": "a"}, current)]) == [{}]
    assert [entity async for entity in table.client.list_entities()] == []


async def test_a_point_read_decodes_the_entity_and_its_etag_and_none_when_missing(table, settings):
    now = datetime.now(UTC)
    [answer] = await table.submit(
        [("create", {"PartitionKey": "p|1", "RowKey": "it's a|b", "Data": b"\x00\x01", "Ratio": 0.5, "Time": now, "Name": "Jé"})]
    )
    table.statistics.reset()
    entity = await table.point_read("p|1", "it's a|b")
    assert (entity["Data"], entity["Ratio"], entity["Name"], entity.metadata["etag"]) == (b"\x00\x01", 0.5, "Jé", answer["etag"])
    assert abs((entity["Time"] - now).total_seconds()) < 0.001
    assert dict(await table.point_read("p|1", "it's a|b", ["Name"])) == {"Name": "Jé"}
    assert await table.point_read("p|1", "other") is None
    assert (table.statistics.requests, table.statistics.entities_read) == (3, 2)
    service = connections.table_service(settings.index, RequestStatistics())
    try:
        assert await Table(service, "nosuchtable").point_read("p", "a") is None  # a table not created yet
        wrong_key = settings.index.connection_string.replace("AccountKey=", "AccountKey=AAAA")
        refused = connections.table_service(Connection(connection_string=wrong_key), RequestStatistics())
        with pytest.raises(HttpResponseError) as error:
            await Table(refused, table.client.table_name).point_read("p|1", "it's a|b")
        assert error.value.status_code == 403
        await refused.close()
    finally:
        await service.close()


async def test_pages_follow_continuations_and_fill_parameters_as_the_sdk(table, settings):
    rows = [f"{n}'s" for n in range(5)]
    await table.submit([("create", {"PartitionKey": "p", "RowKey": row, "N": n, "Extra": "x"}) for n, row in enumerate(rows)])
    await table.submit([("create", {"PartitionKey": "q", "RowKey": "0's", "N": 0})])
    table.statistics.reset()
    query, parameters = "PartitionKey eq @pk and RowKey ge @low", {"pk": "p", "low": "1's"}
    pages = [page async for page in table.pages(query, parameters, ["RowKey", "N"], page_size=2)]
    assert (
        [[dict(entity) for entity in page] for page in pages]
        == [
            [{"RowKey": "1's", "N": 1}, {"RowKey": "2's", "N": 2}],
            [{"RowKey": "3's", "N": 3}, {"RowKey": "4's", "N": 4}],
            [],  # the service may end with an empty page
        ][: len(pages)]
    )
    assert sum(len(page) for page in pages) == 4 and table.statistics.requests == len(pages)
    expected = [entity.metadata["etag"] async for entity in table.client.query_entities(query, parameters=parameters)]
    assert [entity.metadata["etag"] for page in pages for entity in page] == expected
    service = connections.table_service(settings.index, RequestStatistics())
    try:
        with pytest.raises(HttpResponseError) as missing:
            [page async for page in Table(service, "nosuchtable").pages("PartitionKey eq 'p'")]
        assert missing.value.status_code == 404
    finally:
        await service.close()

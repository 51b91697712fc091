"""The change feed: Azure v2 semantics, State updates, and a gap-free, duplicate-free sequence under concurrency."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from dicom_core.http.multipart import read_multipart
from dicom_core.operations.store import StoreRequest, store_instances
from dicom_core.services import Services
from tests.dicom_files import multipart, new_instance, stow_headers, uids
from tests.faults import failing_from


async def put(client, parts, method="POST"):
    body, boundary = multipart(parts)
    response = await client.request(method, "/v2/studies", content=body, headers=stow_headers(boundary))
    assert response.status_code == 200, response.text
    return response


async def feed(client, **parameters):
    response = await client.get("/v2/changefeed", params=parameters)
    assert response.status_code == 200, response.text
    return response.json()


async def test_create_update_delete_entries_and_their_states(client, services):
    first = new_instance(StudyDescription="first")
    study, series, sop = uids(first)[:3]
    assert (await client.get("/v2/changefeed/latest")).status_code == 204
    await put(client, [first])
    await put(client, [new_instance(study=study, series=series, sop=sop, StudyDescription="second")], method="PUT")
    entries = await feed(client)
    assert [(e["Sequence"], e["Action"], e["State"]) for e in entries] == [(1, "create", "replaced"), (2, "update", "current")]
    current = entries[1]
    assert (current["PartitionName"], current["StudyInstanceUid"], current["SeriesInstanceUid"], current["SopInstanceUid"]) == (
        "Microsoft.Default",
        study,
        series,
        sop,
    )
    assert current["FilePath"] == f"AHDS/testws/dicom/testsvc/Microsoft.Default/{study}/{series}/{sop}.dcm"
    assert current["Metadata"]["00081030"]["Value"] == ["second"]
    assert entries[0]["Metadata"] is None  # the replaced version is gone
    assert "Metadata" not in (await feed(client, includeMetadata="false"))[0]

    assert (await client.delete(f"/v2/studies/{study}")).status_code == 204
    entries = await feed(client)
    assert [(e["Action"], e["State"]) for e in entries] == [("create", "replaced"), ("update", "deleted"), ("delete", "deleted")]
    latest = (await client.get("/v2/changefeed/latest", params={"includemetadata": "false"})).json()
    assert (latest["Sequence"], latest["Action"]) == (3, "delete")
    # Stored again after the delete: a create.
    await put(client, [first])
    assert (await client.get("/v2/changefeed/latest")).json()["Action"] == "create"


async def test_offset_limit_and_time_window(client):
    await put(client, [new_instance() for _ in range(5)])
    middle = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await put(client, [new_instance() for _ in range(3)])
    assert [e["Sequence"] for e in await feed(client, offset=2, limit=3)] == [3, 4, 5]
    assert [e["Sequence"] for e in await feed(client, startTime=middle.isoformat())] == [6, 7, 8]
    assert [e["Sequence"] for e in await feed(client, endTime=middle.isoformat(), offset=4)] == [5]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await feed(client, startTime=later) == []
    assert [e["Sequence"] for e in await feed(client, startTime=middle.isoformat(), offset=1, limit=1)] == [7]


@pytest.mark.parametrize(
    "parameters, words",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"startTime": "yesterday"}, "starttime"),
        ({"includeMetadata": "maybe"}, "includemetadata"),
        ({"startTime": "2024-01-02T00:00:00Z", "endTime": "2024-01-01T00:00:00Z"}, "earlier"),
    ],
)
async def test_invalid_parameters_are_400(client, parameters, words):
    response = await client.get("/v2/changefeed", params=parameters)
    assert response.status_code == 400
    assert words in response.json()["message"]


async def test_concurrent_stores_on_several_hosts_give_exact_counts_and_a_gap_free_feed(client, services, settings):
    """Four hosts (each its own Services: own connections, own event loop tasks), 24 requests into one study."""
    hosts = [services] + [await Services.open(settings) for _ in range(3)]
    study = uids(new_instance())[0]
    series = [uids(new_instance())[1] for _ in range(3)]
    requests = [[new_instance(study=study, series=series[n % 3]) for _ in range(5)] for n in range(24)]

    async def store(host: Services, parts: list[bytes]) -> None:
        body, boundary = multipart(parts)

        async def chunks():
            yield body

        result = await store_instances(
            host,
            StoreRequest("Microsoft.Default", None, False, "http://x/v2"),
            read_multipart(chunks(), boundary, host.settings.limits),
        )
        assert result.status == 200

    try:
        await asyncio.gather(*(store(hosts[n % len(hosts)], parts) for n, parts in enumerate(requests)))
    finally:
        for host in hosts[1:]:
            await host.close()
    entity = await services.index.get_study("Microsoft.Default", study)
    assert (entity.instance_count, entity.series_count) == (120, 3)
    entries = []
    while page := await feed(client, offset=len(entries), limit=200, includeMetadata="false"):
        entries += page
    assert [e["Sequence"] for e in entries] == list(range(1, 121)), "gap-free, duplicate-free, in order"
    assert sorted(e["SopInstanceUid"] for e in entries) == sorted(uids(p)[2] for parts in requests for p in parts)
    assert {e["Action"] for e in entries} == {"create"}
    times = [e["Timestamp"] for e in entries]
    assert times == sorted(times)


async def test_a_feed_outage_during_a_store_is_announced_by_reconcile(client, services, monkeypatch):
    from dicom_core.operations.reconcile import reconcile_path

    monkeypatch.setattr(services.changefeed, "append", failing_from(services.changefeed.append, 1))
    data = new_instance()
    await put(client, [data])  # stored and indexed; the feed could not be written
    monkeypatch.undo()
    assert await feed(client) == []
    key_path = f"AHDS/testws/dicom/testsvc/Microsoft.Default/{'/'.join(uids(data)[:3])}.dcm"
    await reconcile_path(services, key_path)
    await reconcile_path(services, key_path)  # idempotent: announced once
    assert [(e["Sequence"], e["Action"]) for e in await feed(client)] == [(1, "create")]
    assert json.dumps(await feed(client))  # serialisable

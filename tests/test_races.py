"""DELETEs racing STOWs, PUTs and each other, on two hosts at once: the archive ends consistent every time.

Each round runs the requests concurrently through two apps over two sets of services
(two hosts of one deployment) and then asserts the invariants with the checker: a store
racing a delete ends with its instances stored and counted, or refused, never as index
entries without files (docs/reliability.md).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from dicom_core.http.app import create_app
from dicom_core.operations.check import check
from dicom_core.services import Services
from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import multipart, new_instance, stow_headers, uids

ROUNDS = 6


@pytest.fixture
async def second_host(services):
    """Another host of the same deployment: its own connections, the same lake and index."""
    other = await Services.open(services.settings)
    app = create_app(other.settings, other)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://other") as http:
        yield http
    await other.close()


async def store(client: httpx.AsyncClient, parts: list[bytes], method: str = "POST") -> httpx.Response:
    body, boundary = multipart(parts)
    return await client.request(method, "/v2/studies", content=body, headers=stow_headers(boundary))


def stored_sops(response: httpx.Response) -> set[str]:
    return {item["00081155"]["Value"][0] for item in response.json().get("00081199", {}).get("Value", [])}


async def assert_consistent(services: Services) -> None:
    violations = await check(services)
    assert not violations, "\n".join(map(str, violations))


async def test_a_series_delete_racing_stores_into_the_series_leaves_no_entry_without_its_file(client, second_host, services):
    for _ in range(ROUNDS):
        first = new_instance()
        study, series = uids(first)[:2]
        assert (await store(client, [first])).status_code == 200
        batches = [[new_instance(study=study, series=series) for _ in range(10)] for _ in range(3)]
        results = await asyncio.gather(
            store(client, batches[0]),
            store(second_host, batches[1]),
            second_host.delete(f"/v2/studies/{study}/series/{series}"),
            store(client, batches[2]),
        )
        assert results[2].status_code == 204
        await assert_consistent(services)
        # Whatever survived is retrievable: an instance in the index has its file.
        listed = (await client.get(f"/v2/studies/{study}/series/{series}/instances")).json()
        for match in listed:
            sop = match["00080018"]["Value"][0]
            url = f"/v2/studies/{study}/series/{series}/instances/{sop}"
            assert (await client.get(url, headers={"Accept": "application/dicom"})).status_code == 200


async def test_two_deletes_of_one_study_both_succeed_and_remove_everything(client, second_host, services):
    for _ in range(ROUNDS):
        parts = [new_instance()]
        study = uids(parts[0])[0]
        parts += [new_instance(study=study) for _ in range(19)]
        assert (await store(client, parts)).status_code == 200
        results = await asyncio.gather(client.delete(f"/v2/studies/{study}"), second_host.delete(f"/v2/studies/{study}"))
        assert {response.status_code for response in results} <= {204, 404}
        assert 204 in {response.status_code for response in results}
        assert (await client.get("/v2/studies", params={"StudyInstanceUID": study})).json() == []
        await assert_consistent(services)


async def test_a_delete_racing_a_put_of_the_same_instance_ends_stored_or_deleted(client, second_host, services):
    for _ in range(ROUNDS):
        original = new_instance(StudyDescription="original")
        study, series, sop, _ = uids(original)
        assert (await store(client, [original])).status_code == 200
        replacement = new_instance(study=study, series=series, sop=sop, StudyDescription="replacement")
        put, deleted = await asyncio.gather(
            store(second_host, [replacement], method="PUT"), client.delete(f"/v2/studies/{study}/series/{series}/instances/{sop}")
        )
        assert deleted.status_code in (204, 404)
        await assert_consistent(services)
        record = await services.index.get_instance(InstanceKey("Microsoft.Default", study, series, sop))
        if record is not None:  # the PUT won: it says so, and its bytes are what is stored
            assert sop in stored_sops(put)
            retrieved = await client.get(f"/v2/studies/{study}/series/{series}/instances/{sop}/metadata")
            assert retrieved.json()[0]["00081030"]["Value"] == ["replacement"]

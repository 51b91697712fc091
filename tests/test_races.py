"""DELETEs racing STOWs, PUTs and each other, on two hosts at once: the archive ends consistent every time.

Each round runs the requests concurrently through two apps over two sets of services
(two hosts of one deployment) and then asserts the invariants with the checker: a store
racing a delete ends with its instances stored and counted, or refused, never as index
entries without files (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest

from dicom_core.events import run_operations
from dicom_core.http.app import create_app
from dicom_core.operations.check import check
from dicom_core.operations.delete import delete
from dicom_core.operations.reconcile import contract_files, reconcile_path, reindex
from dicom_core.services import Services
from dicom_core.storage.lake import FileMissing
from dicom_core.storage.layout import InstanceKey, Scope
from tests.dicom_files import multipart, new_instance, stow_headers, uids

ROUNDS = 6


@pytest.fixture
async def second_services(services):
    """The services of another host of the same deployment: its own connections, the same lake and index."""
    other = await Services.open(services.settings)
    yield other
    await other.close()


@pytest.fixture
async def second_host(second_services):
    app = create_app(second_services.settings, second_services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://other") as http:
        yield http


async def store(client: httpx.AsyncClient, parts: list[bytes], method: str = "POST") -> httpx.Response:
    body, boundary = multipart(parts)
    return await client.request(method, "/v2/studies", content=body, headers=stow_headers(boundary))


def stored_sops(response: httpx.Response) -> set[str]:
    return {item["00081155"]["Value"][0] for item in response.json().get("00081199", {}).get("Value", [])}


async def assert_consistent(services: Services) -> None:
    violations = await check(services)
    assert not violations, "\n".join(map(str, violations))


def hold(
    monkeypatch: pytest.MonkeyPatch,
    adapter: object,
    method: str,
    *,
    until: asyncio.Event | None = None,
    reached: asyncio.Event | None = None,
    done: asyncio.Event | None = None,
) -> None:
    """Run the real ``adapter.method`` only once ``until`` is set, setting ``reached`` before and ``done`` after it."""
    real = getattr(adapter, method)

    async def held(*args, **kwargs):
        if reached is not None:
            reached.set()
        if until is not None:
            await until.wait()
        result = await real(*args, **kwargs)
        if done is not None:
            done.set()
        return result

    monkeypatch.setattr(adapter, method, held)


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


@pytest.mark.parametrize("method", ["POST", "PUT"], ids=["POST over an orphan file", "PUT over a stored instance"])
async def test_a_store_landing_between_the_file_and_entry_steps_of_a_delete_leaves_no_file_without_its_entry(
    client, second_host, second_services, services, monkeypatch, method
):
    """The delete holds the instance (its file was there when it listed the series) and has removed the file;
    the store then writes the file, the entry and the feed entry again; only then does the delete remove entries."""
    instance = new_instance()
    study, series, sop, _ = uids(instance)
    key = InstanceKey("Microsoft.Default", study, series, sop)
    if method == "POST":  # what a STOW cut off between the file and its entry leaves (docs/reliability.md)
        await services.lake.write(services.layout.instance_path(key), io.BytesIO(instance), len(instance), overwrite=False)
    else:
        assert (await store(client, [instance])).status_code == 200
    at_entries, go_on = asyncio.Event(), asyncio.Event()
    hold(monkeypatch, second_services.index, "delete_instance", reached=at_entries, until=go_on)
    deleting = asyncio.create_task(second_host.delete(f"/v2/studies/{study}/series/{series}"))
    await asyncio.wait_for(at_entries.wait(), 30)
    assert not [file async for file in services.lake.list(services.layout.series_folder(key.partition, study, series))]
    again = await store(client, [new_instance(study=study, series=series, sop=sop, StudyDescription="again")], method)
    go_on.set()
    assert (await deleting).status_code == 204
    await assert_consistent(services)
    # Stored (and then indexed with its file), or refused (and then gone).
    assert (sop in stored_sops(again)) == (await services.index.get_instance(key) is not None)


async def test_a_store_announcing_after_the_feed_step_of_a_delete_that_holds_its_instance_leaves_nothing_current(
    client, second_host, second_services, services, monkeypatch
):
    """The delete lists the new file; the store sees file and entry still there, but announces them only
    after the delete has announced its deletes (nothing for an instance not announced yet)."""
    instance = new_instance()
    study, series, sop, _ = uids(instance)
    written, announcing, fed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    hold(monkeypatch, services.lake, "write", done=written)
    hold(monkeypatch, services.changefeed, "append", reached=announcing, until=fed)
    hold(monkeypatch, second_services.lake, "delete", until=announcing)
    hold(monkeypatch, second_services.changefeed, "append", done=fed)
    storing = asyncio.create_task(store(client, [instance]))
    await asyncio.wait_for(written.wait(), 30)
    deleted = await second_host.delete(f"/v2/studies/{study}/series/{series}")
    stored = await asyncio.wait_for(storing, 30)
    assert deleted.status_code == 204
    await assert_consistent(services)
    record = await services.index.get_instance(InstanceKey("Microsoft.Default", study, series, sop))
    assert (sop in stored_sops(stored)) == (record is not None)


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


async def put_after_a_delete_died_before_marking_itself(client, services, monkeypatch) -> tuple[InstanceKey, bytes]:
    """An instance and another of its series stored; a delete of the first that wrote its journal row and
    died before it marked itself running (an exception there stops it as a kill would: nothing after it
    runs); then a PUT of the first again, which no marker warns of. Returns its key and the other instance."""
    instance = new_instance(StudyDescription="original")
    study, series, sop, _ = uids(instance)
    other = new_instance(study=study, series=series)
    assert (await store(client, [instance, other])).status_code == 200
    key = InstanceKey("Microsoft.Default", study, series, sop)

    async def host_stopped(*args, **kwargs):
        raise RuntimeError("the host stopped")

    monkeypatch.setattr(services.deletes, "begin", host_stopped)
    with pytest.raises(RuntimeError):
        await delete(services, Scope(key.partition, study, series, sop))
    monkeypatch.undo()
    assert [row.key async for row in services.deletes.rows_of_study(key.partition, study)] == [key]
    replacement = new_instance(study=study, series=series, sop=sop, StudyDescription="replacement")
    assert (await store(client, [replacement], method="PUT")).status_code == 200
    return key, other


@pytest.mark.parametrize("finisher", ["a delete of another instance", "a reconcile", "a reindex"])
async def test_a_put_after_a_delete_died_before_marking_itself_is_not_removed_when_its_rows_are_finished(
    client, services, monkeypatch, finisher
):
    """Whoever finishes the dead delete's row later removes only the version that delete found."""
    key, other = await put_after_a_delete_died_before_marking_itself(client, services, monkeypatch)
    study, series, sop = key.study, key.series, key.sop
    if finisher == "a delete of another instance":
        assert (await client.delete(f"/v2/studies/{study}/series/{series}/instances/{uids(other)[2]}")).status_code == 204
    elif finisher == "a reconcile":
        await reconcile_path(services, services.layout.instance_path(key))
    else:
        await reindex(services, await contract_files(services))

    assert [row async for row in services.deletes.rows_of_study(key.partition, study)] == []
    retrieved = await client.get(f"/v2/studies/{study}/series/{series}/instances/{sop}/metadata")
    assert retrieved.status_code == 200
    assert retrieved.json()[0]["00081030"]["Value"] == ["replacement"]
    await assert_consistent(services)


async def test_a_delete_retried_after_a_put_removes_the_version_the_put_stored(client, services, monkeypatch):
    """The dead delete's row names the version before the PUT; its client's retry comes after the PUT and
    removes the instance as it is now."""
    key, _ = await put_after_a_delete_died_before_marking_itself(client, services, monkeypatch)
    url = f"/v2/studies/{key.study}/series/{key.series}/instances/{key.sop}"
    assert (await client.delete(url)).status_code == 204
    assert (await client.get(url, headers={"Accept": "application/dicom"})).status_code == 404
    assert [row async for row in services.deletes.rows_of_study(key.partition, key.study)] == []
    with pytest.raises(FileMissing):
        await services.lake.properties(services.layout.instance_path(key))
    await assert_consistent(services)


async def test_a_delete_removes_the_version_a_bulk_update_made_of_the_file_it_found(
    client, second_host, second_services, services, monkeypatch
):
    """The delete lists the instance, then a bulk update rewrites its file (a new version) before the delete's
    file step: a delete that is running removes what is at the path, so the instance is deleted all the same."""
    instance = new_instance(PatientID="WRONG-1")
    study, series, sop, _ = uids(instance)
    key = InstanceKey("Microsoft.Default", study, series, sop)
    assert (await store(client, [instance])).status_code == 200
    before = await services.lake.properties(services.layout.instance_path(key))
    at_files, go_on = asyncio.Event(), asyncio.Event()
    hold(monkeypatch, second_services.lake, "delete", reached=at_files, until=go_on)
    deleting = asyncio.create_task(second_host.delete(f"/v2/studies/{study}/series/{series}/instances/{sop}"))
    await asyncio.wait_for(at_files.wait(), 30)
    change = {"studyInstanceUids": [study], "changeDataset": {"00100020": {"vr": "LO", "Value": ["RIGHT-1"]}}}
    assert (await client.post("/v2/studies/$bulkUpdate", json=change)).status_code == 202
    assert await run_operations(services, owner="updater") == 1
    assert (await services.lake.properties(services.layout.instance_path(key))).etag != before.etag
    go_on.set()
    assert (await deleting).status_code == 204
    assert await services.index.get_instance(key) is None
    with pytest.raises(FileMissing):
        await services.lake.properties(services.layout.instance_path(key))
    await assert_consistent(services)

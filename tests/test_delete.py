"""DELETE of studies, series and instances against Azurite, with storage faults in the middle."""

from __future__ import annotations

import pytest

from dicom_core.storage.layout import InstanceKey
from tests.dicom_files import multipart, new_instance, stow_headers, uids
from tests.faults import failing_from

DEFAULT = "Microsoft.Default"


async def store(client, parts, prefix="/v2"):
    body, boundary = multipart(parts)
    response = await client.post(f"{prefix}/studies", content=body, headers=stow_headers(boundary))
    assert response.status_code == 200, response.text
    return [uids(part)[:3] for part in parts]


async def study_of_two_series(client):
    study = uids(new_instance())[0]
    ct, mr = (uids(new_instance())[1] for _ in range(2))
    parts = [new_instance(study=study, series=ct, modality="CT") for _ in range(3)]
    parts += [new_instance(study=study, series=mr, modality="MR") for _ in range(3)]
    return study, ct, mr, await store(client, parts)


async def files_of(services, partition, study):
    return [file.path async for file in services.lake.list(services.layout.study_folder(partition, study))]


async def test_delete_instance_series_and_study_keep_counts_and_modalities_right(client, services):
    study, ct, mr, stored = await study_of_two_series(client)
    _, _, sop = next(item for item in stored if item[1] == ct)
    response = await client.delete(f"/v2/studies/{study}/series/{ct}/instances/{sop}")
    assert response.status_code == 204
    assert await services.index.get_instance(InstanceKey(DEFAULT, study, ct, sop)) is None
    assert len(await files_of(services, DEFAULT, study)) == 5
    entity = await services.index.get_study(DEFAULT, study)
    assert (entity.instance_count, entity.series_count) == (5, 2)
    assert (await services.index.get_series(DEFAULT, study, ct)).instance_count == 2

    assert (await client.delete(f"/v2/studies/{study}/series/{mr}")).status_code == 204
    entity = await services.index.get_study(DEFAULT, study)
    assert (entity.instance_count, entity.series_count) == (2, 1)
    assert dict(entity.modality_counts) == {"CT": 1}
    assert await services.index.get_series(DEFAULT, study, mr) is None

    assert (await client.delete(f"/v2/studies/{study}")).status_code == 204
    assert await services.index.get_study(DEFAULT, study) is None
    assert await files_of(services, DEFAULT, study) == []
    assert [e async for e in services.index.instances_of_study(DEFAULT, study)] == []
    assert [r async for r in services.deletes.rows_of_study(DEFAULT, study)] == []


@pytest.mark.parametrize(
    "path, level",
    [
        ("/v2/studies/1.2.3", "study 1.2.3"),
        ("/v2/studies/{study}/series/1.2.3", "series 1.2.3"),
        ("/v2/studies/{study}/series/{series}/instances/1.2.3", "instance 1.2.3"),
    ],
)
async def test_delete_of_what_is_not_stored_is_404_naming_the_level(client, path, level):
    study, series, _ = (await store(client, [new_instance()]))[0]
    response = await client.delete(path.format(study=study, series=series))
    assert response.status_code == 404
    assert response.json()["message"].startswith(level)


async def test_delete_in_a_partition_leaves_other_partitions_alone(client, services):
    data = new_instance()
    study = uids(data)[0]
    await store(client, [data], "/v2/partitions/alpha")
    await store(client, [data])
    assert (await client.delete(f"/v2/partitions/alpha/studies/{study}")).status_code == 204
    assert await files_of(services, "alpha", study) == []
    assert len(await files_of(services, DEFAULT, study)) == 1
    assert (await services.index.get_study(DEFAULT, study)).instance_count == 1
    assert (await client.delete(f"/v2/partitions/alpha/studies/{study}")).status_code == 404


async def test_invalid_uid_in_delete_url_is_400(client):
    response = await client.delete("/v2/studies/1.2.abc")
    assert response.status_code == 400


async def test_orphan_files_without_entries_are_deleted_too(client, services):
    study, series, sop = (await store(client, [new_instance()]))[0]
    await services.index.delete_instance(InstanceKey(DEFAULT, study, series, sop))  # the file is now an orphan
    assert (await client.delete(f"/v2/studies/{study}/series/{series}/instances/{sop}")).status_code == 204
    assert await files_of(services, DEFAULT, study) == []


@pytest.mark.parametrize(
    "fail_at, call",
    [("changefeed.append", 1), ("index.refresh", 1), ("index.delete_instance", 2), ("deletes.release", 1)],
)
async def test_a_delete_interrupted_by_an_outage_is_finished_by_the_next_one(client, services, monkeypatch, fail_at, call):
    study, ct, mr, stored = await study_of_two_series(client)
    adapter, method = fail_at.split(".")
    target = getattr(services, adapter)
    monkeypatch.setattr(target, method, failing_from(getattr(target, method), call))
    response = await client.delete(f"/v2/studies/{study}/series/{mr}")
    assert response.status_code == 503
    assert len(await files_of(services, DEFAULT, study)) == 3, "the files went first"
    monkeypatch.undo()
    assert [r async for r in services.deletes.rows_of_study(DEFAULT, study)], "the journal keeps the interrupted delete"
    # The next delete in that study finishes it at once.
    _, _, ct_sop = next(item for item in stored if item[1] == ct)
    assert (await client.delete(f"/v2/studies/{study}/series/{ct}/instances/{ct_sop}")).status_code == 204
    assert [r async for r in services.deletes.rows_of_study(DEFAULT, study)] == []
    entity = await services.index.get_study(DEFAULT, study)
    assert (entity.instance_count, entity.series_count) == (2, 1)
    assert dict(entity.modality_counts) == {"CT": 1}
    assert await services.index.get_series(DEFAULT, study, mr) is None
    assert len([e async for e in services.index.instances_of_study(DEFAULT, study)]) == 2
    assert len(await files_of(services, DEFAULT, study)) == 2

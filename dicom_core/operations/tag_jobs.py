"""The operations of extended query tags: reindex the archive for new tags, remove a deleted tag's entries.

Both are ``JobHandler`` s of operations/jobs.py: each step is a bounded batch, idempotent, so a
step redone after a crash changes nothing.

- **reindex** walks the index's instance entities in key order (partition, study, series,
  instance), a batch at a time, and reads each one's DICOM JSON from the entity itself
  (the file only when the JSON was too large for the index). For every tag of the operation
  still Adding, it writes the lookup entries first, then adds the values to the instance,
  series and study entities' attributes, and records values that do not fit the VR as the
  tag's errors. The checkpoint is the last instance done; progress is instances done over
  the instances the studies counted when the reindex started. When the walk ends, the tags
  become Ready. Instances stored meanwhile are indexed by their store (stores index Adding tags).
- **deleteExtendedQueryTag** clears the tag's lookup partitions one DICOM partition per step,
  then its errors, then removes the tag from the registry.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from dicom_core.dicom.extended_tags import TagDeclaration
from dicom_core.dicom.levels import Level
from dicom_core.operations.describing import describe_file
from dicom_core.operations.extended_tags import ADDING, READY, indexed_declarations, record_tag_errors
from dicom_core.operations.indexing import extended_values
from dicom_core.operations.jobs import Progress
from dicom_core.services import Services
from dicom_core.storage.extended_tags_store import TagChanged
from dicom_core.storage.lake import FileMissing
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.lookup import level_entries, partition_key
from dicom_core.storage.lookup_plan import words_attribute
from dicom_core.storage.records import InstanceRecord, OperationRecord

_WRITES_IN_FLIGHT = 16


async def _tags_of(services: Services, operation: OperationRecord) -> list[TagDeclaration]:
    """The operation's tags that are still Adding under it (a tag deleted meanwhile drops out)."""
    return [
        record.declaration
        for record in await services.extended_tags.all()
        if record.status == ADDING and record.operation_id == operation.id
    ]


class ReindexTags:
    """Index the instances stored before the operation's tags were added."""

    async def step(self, services: Services, operation: OperationRecord) -> Progress:
        tags = await _tags_of(services, operation)
        if not tags:
            return Progress(operation.checkpoint, operation.done, operation.total, finished=True)
        total = operation.total or await services.index.instance_total()
        checkpoint = operation.checkpoint or {}
        after = InstanceKey(*checkpoint["after"]) if checkpoint.get("after") else None
        size = services.settings.jobs.batch_size
        batch = await services.index.instances_after(after, size)
        await index_tags(services, batch, tags)
        if batch:
            last = batch[-1].key
            checkpoint = {"after": [last.partition, last.study, last.series, last.sop]}
        done = operation.done + len(batch)
        return Progress(checkpoint, done, max(total, done), finished=len(batch) < size)

    async def completed(self, services: Services, operation: OperationRecord) -> None:
        """The operation's tags become Ready (searchable); one changed meanwhile is read again."""
        for _ in range(3):
            pending = [
                record
                for record in await services.extended_tags.all()
                if record.status == ADDING and record.operation_id == operation.id
            ]
            try:
                for record in pending:
                    await services.extended_tags.replace(replace(record, status=READY))
                return
            except TagChanged:
                continue


async def index_tags(services: Services, batch: list[InstanceRecord], tags: list[TagDeclaration]) -> None:
    """Index ``tags`` for the instances of ``batch``, as a reindex step does (and a store, for tags added meanwhile).

    The lookup entries first, then the values in the instance, series and study entities, then
    the values that do not fit a tag's VR as the tag's errors.
    """
    instances: dict[InstanceKey, dict] = {}
    above: dict[tuple[Level, str, tuple[str, ...]], dict] = {}  # the last instance of a study or series wins
    errors: list[tuple[str, InstanceKey, str]] = []
    for record, metadata in zip(batch, await asyncio.gather(*(_metadata(services, r) for r in batch)), strict=True):
        if metadata is None:
            continue  # the file went with its JSON too large for the index: nothing to index
        key = record.key
        values, problems = extended_values(metadata, tags)
        errors += [(path, key, message) for path, message in problems]
        if values[Level.INSTANCE]:
            instances[key] = values[Level.INSTANCE]
        for level, path in ((Level.STUDY, (key.study,)), (Level.SERIES, (key.study, key.series))):
            if values[level]:
                above[(level, key.partition, path)] = values[level]
    entries = [
        entry
        for key, elements in instances.items()
        for entry in level_entries(key.partition, Level.INSTANCE, (key.study, key.series, key.sop), elements)
    ]
    for (level, partition, path), elements in above.items():
        entries += level_entries(partition, level, path, elements)
    await services.index.lookup.put(entries)  # entries first, as stores write them: a value is never unfindable
    slots = asyncio.Semaphore(_WRITES_IN_FLIGHT)

    async def add(level: Level, partition: str, path: tuple[str, ...], elements: dict) -> None:
        async with slots:
            await services.index.add_attributes(level, partition, path, elements)

    writes = [add(Level.INSTANCE, k.partition, (k.study, k.series, k.sop), e) for k, e in instances.items()]
    writes += [add(level, partition, path, elements) for (level, partition, path), elements in above.items()]
    await asyncio.gather(*writes)
    by_instance: dict[InstanceKey, list[tuple[str, str]]] = {}
    for path, key, message in errors:
        by_instance.setdefault(key, []).append((path, message))
    for key, problems in by_instance.items():
        await record_tag_errors(services, key, problems)


async def index_tags_added_since(services: Services, tags: list[TagDeclaration], stored: list[InstanceRecord]) -> None:
    """Index for ``stored`` the extended query tags added since the registry read ``tags``.

    A tag's reindex walks the instance entities there once the tag is added. A store (or a
    reconcile) reads the registry before it writes its entities and its series' and study's
    attributes, so a tag added meanwhile may have found none of them, or had its values
    overwritten by them. So it reads the registry again once all of it is written: a tag
    this read finds and the first did not was added meanwhile, and the instances are indexed
    for it here, as the reindex would; a tag added after this read finds everything in place.
    """
    if not stored:
        return
    added = [tag for tag in await indexed_declarations(services) if tag not in tags]
    if added:
        await index_tags(services, stored, added)


async def _metadata(services: Services, record: InstanceRecord) -> dict | None:
    """An instance's DICOM JSON: from its entity, or from its file when the entity could not hold it."""
    if record.metadata_json is not None:
        return record.metadata
    try:
        file = await services.lake.properties(record.path)
        _, described = await describe_file(services, record.path, file)
    except FileMissing:
        return None
    return None if described is None else described.metadata


class DeleteTag:
    """Remove a deleted tag's lookup entries (one DICOM partition per step), its errors, then the tag."""

    async def step(self, services: Services, operation: OperationRecord) -> Progress:
        path = operation.parameters["tag"]
        record = await services.extended_tags.get(path)
        partitions = [name for name, _ in await services.index.partitions()]
        remaining = [name for name in partitions if name > (operation.checkpoint or {}).get("after", "")]
        if record is None or not remaining:
            return Progress(operation.checkpoint, operation.done, len(partitions), finished=True)
        partition = remaining[0]
        key = record.declaration.matching_key()
        for attribute in (key.attribute, words_attribute(key.attribute)):
            await services.index.lookup.clear(partition_key(partition, key.level, attribute))
        done = len(partitions) - len(remaining) + 1
        return Progress({"after": partition}, done, len(partitions), finished=False)

    async def completed(self, services: Services, operation: OperationRecord) -> None:
        path = operation.parameters["tag"]
        row_keys = [row_key async for row_key in services.extended_tags.error_keys(path)]
        await services.extended_tags.remove_errors(path, row_keys)
        await services.extended_tags.remove(path)

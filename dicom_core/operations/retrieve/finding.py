"""What to retrieve, planned from the index: the instances of a study, series or instance, or a precise 404."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from dicom_core.errors import DicomServiceError, NotFound
from dicom_core.operations.retrieve.reading import ReadAhead, StaleRecord
from dicom_core.services import Services
from dicom_core.settings import DEFAULT_PARTITION
from dicom_core.storage.layout import InstanceKey, Scope
from dicom_core.storage.records import InstanceRecord


async def find_instance(services: Services, key: InstanceKey) -> InstanceRecord:
    """The instance ``key`` read from the index; NotFound names the level (study, series, instance) that is missing."""
    record = await services.index.get_instance(key)
    if record is None:
        raise await missing(services, Scope(key.partition, key.study, key.series, key.sop))
    return record


T = TypeVar("T")


async def with_instance(
    services: Services,
    key: InstanceKey,
    use: Callable[[InstanceRecord, ReadAhead | None], Awaitable[T]],
    *,
    read_ahead: bool = False,
    read_ahead_limit: int | None = None,
) -> T:
    """``use`` of the instance ``key``, from this process's cached record when it has one.

    ``use`` must read the file through reading.open_file before it returns, as a response's
    first part does. That read is conditional on the cached ETag, so a file replaced or deleted
    since cannot be served from a stale record, and a success needs no index read. Any failure
    with a cached record (the lake contradicts it, or an error decided from its fields, such
    as a frame number or a transfer syntax) is decided again on a fresh index read, so every
    error is the one a fresh record gives.

    Without a cached record and with ``read_ahead`` (for a ``use`` that may read the whole file), the
    file at the instance's layout path is requested at the same time as the index read, and
    ``use`` gets that read to serve it if the record proves it current (reading.ReadAhead): one
    round trip of latency instead of two. With ``read_ahead_limit``, only that many bytes are asked
    for, and they serve only a file no larger.
    """
    record = services.index.cached_instance(key)
    if record is not None:
        try:
            return await use(record, None)
        except (StaleRecord, DicomServiceError):
            pass
    ahead = ReadAhead(services.lake, services.layout.instance_path(key), read_ahead_limit) if read_ahead else None
    try:
        return await use(await find_instance(services, key), ahead)
    finally:
        if ahead is not None:
            await ahead.close()


async def find_instances(services: Services, target: Scope, *, metadata: bool = False) -> list[InstanceRecord]:
    """The instances of a study, series or instance, in index order (by series, then SOP Instance UID)."""
    if target.sop is not None and target.series is not None:
        return [await find_instance(services, InstanceKey(target.partition, target.study, target.series, target.sop))]
    instances = [
        record
        async for record in services.index.instances_of_study(target.partition, target.study, target.series, metadata=metadata)
    ]
    if not instances:
        raise await missing(services, target)
    return instances


async def missing(services: Services, target: Scope) -> NotFound:
    """A 404 that says which level of ``target`` is not stored."""
    where = "" if target.partition == DEFAULT_PARTITION else f" in partition {target.partition}"
    if await services.index.get_study(target.partition, target.study) is None:
        return NotFound(f"study {target.study} is not stored{where}")
    if target.series is not None and await services.index.get_series(target.partition, target.study, target.series) is None:
        return NotFound(f"series {target.series} is not stored in study {target.study}{where}")
    if target.sop is not None:
        return NotFound(f"instance {target.sop} is not stored in series {target.series} of study {target.study}{where}")
    level = f"series {target.series}" if target.series else f"study {target.study}"
    return NotFound(f"{level}{where} has no stored instances")

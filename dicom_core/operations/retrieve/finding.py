"""What to retrieve, planned from the index: the instances of a study, series or instance, or a precise 404."""

from __future__ import annotations

from dicom_core.errors import NotFound
from dicom_core.services import Services
from dicom_core.settings import DEFAULT_PARTITION
from dicom_core.storage.layout import InstanceKey, Scope
from dicom_core.storage.records import InstanceRecord


async def find_instance(services: Services, key: InstanceKey) -> InstanceRecord:
    """The instance ``key``; NotFound names the level (study, series, instance) that is missing."""
    record = await services.index.get_instance(key)
    if record is None:
        raise await missing(services, Scope(key.partition, key.study, key.series, key.sop))
    return record


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

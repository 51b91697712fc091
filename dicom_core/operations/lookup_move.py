"""moveInstanceLookups: instance lookup entries of an archive from before their own table move there.

Archives written before ``{prefix}instancelookup`` existed hold their instance entries in
``{prefix}lookup`` (storage/lookup.py, ``LookupTables``). Instance searches stay right
meanwhile, reading both tables; this operation makes them read one again. It is a
``JobHandler`` of operations/jobs.py, started by the operations worker itself
(``start_if_needed``), once per archive, under a fixed id. Each step moves one page of one
DICOM partition's entries, copying before deleting, so a step cut off and redone changes
nothing; when every partition is done the instance table is marked complete.
"""

from __future__ import annotations

import contextlib
import uuid

from azure.core.exceptions import ResourceExistsError

from dicom_core.operations import jobs
from dicom_core.operations.jobs import Progress
from dicom_core.services import Services
from dicom_core.storage.records import OperationRecord

MOVE_INSTANCE_LOOKUPS = "moveInstanceLookups"
MOVE_OPERATION_ID = uuid.uuid5(uuid.NAMESPACE_URL, "dicom_core:moveInstanceLookups").hex


class MoveInstanceLookups:
    """Move the instance lookup entries one DICOM partition at a time, then mark the instance table complete."""

    async def step(self, services: Services, operation: OperationRecord) -> Progress:
        partitions = [name for name, _ in await services.index.partitions()]
        checkpoint = operation.checkpoint or {"after": "", "moved": 0}
        remaining = [name for name in partitions if name > checkpoint["after"]]
        if not remaining:
            return Progress(checkpoint, len(partitions), len(partitions), finished=True)
        moved = await services.index.lookup.move_instance_entries(remaining[0])
        done = len(partitions) - len(remaining)
        if moved:
            return Progress({**checkpoint, "moved": checkpoint["moved"] + moved}, done, len(partitions), finished=False)
        return Progress({**checkpoint, "after": remaining[0]}, done + 1, len(partitions), finished=False)

    async def completed(self, services: Services, operation: OperationRecord) -> None:
        await services.index.lookup.mark_complete()


async def start_if_needed(services: Services) -> None:
    """Start the move when the instance table is not complete and no move is under way; no request once it is."""
    if await services.index.lookup.instances_complete():
        return
    existing = await services.operations.get(MOVE_OPERATION_ID)
    if existing is not None:
        if existing.status not in jobs.FINISHED:
            await services.operations.keep_pending(MOVE_OPERATION_ID)  # its pending row may be lost to a crash
        return
    with contextlib.suppress(ResourceExistsError):  # another worker started it first
        await jobs.start(services, MOVE_INSTANCE_LOOKUPS, {}, (), operation_id=MOVE_OPERATION_ID)

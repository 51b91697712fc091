"""Flag an instance entity whose file changed in the lake outside the API.

The lake is the source of truth (design.md). When a retrieve finds that the file
behind an index entry was removed or rewritten by someone else (its ETag differs
from the one indexed), it marks the entity with ``ReconciliationNeeded`` (the
reason) and ``ReconciliationFlaggedAt``, so that reconciliation can find and
repair it. The flag is merged into the entity; nothing else of it changes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from dicom_core.storage.index import Index, instance_row_key, study_partition_key
from dicom_core.storage.layout import InstanceKey

logger = logging.getLogger(__name__)

FILE_REMOVED = "file removed from the lake outside the API"
FILE_CHANGED = "file modified in the lake outside the API"


async def flag_for_reconciliation(index: Index, key: InstanceKey, reason: str) -> None:
    """Mark the instance entity of ``key``; a failure to do so is logged, never raised."""
    entity = {
        "PartitionKey": study_partition_key(key.partition, key.study),
        "RowKey": instance_row_key(key.series, key.sop),
        "ReconciliationNeeded": reason,
        "ReconciliationFlaggedAt": datetime.now(UTC),
    }
    try:
        await index.instances.update_entity(entity, mode=UpdateMode.MERGE)
    except ResourceNotFoundError:
        return  # deleted meanwhile: nothing left to reconcile
    except AzureError as error:
        logger.warning("could not flag instance %s for reconciliation: %s", key.sop, type(error).__name__)

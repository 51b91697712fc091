"""The types of long-running operations and their handlers (operations/jobs.py)."""

from __future__ import annotations

from collections.abc import Mapping

from dicom_core.operations.bulk_update import UPDATE, BulkUpdateJob
from dicom_core.operations.export import EXPORT, ExportJob
from dicom_core.operations.extended_tags import DELETE_TAG, REINDEX
from dicom_core.operations.jobs import JobHandler
from dicom_core.operations.lookup_move import MOVE_INSTANCE_LOOKUPS, MoveInstanceLookups
from dicom_core.operations.tag_jobs import DeleteTag, ReindexTags

HANDLERS: Mapping[str, JobHandler] = {
    REINDEX: ReindexTags(),
    DELETE_TAG: DeleteTag(),
    EXPORT: ExportJob(),
    UPDATE: BulkUpdateJob(),
    MOVE_INSTANCE_LOOKUPS: MoveInstanceLookups(),
}

"""The types of long-running operations and their handlers (operations/jobs.py).

Bulk update and export plug in here with a handler of their own.
"""

from __future__ import annotations

from collections.abc import Mapping

from dicom_core.operations.extended_tags import DELETE_TAG, REINDEX
from dicom_core.operations.jobs import JobHandler
from dicom_core.operations.tag_jobs import DeleteTag, ReindexTags

HANDLERS: Mapping[str, JobHandler] = {REINDEX: ReindexTags(), DELETE_TAG: DeleteTag()}

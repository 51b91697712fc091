"""POST /v2/studies/$bulkUpdate (also under /v2/partitions/{partition}): start a bulk update (docs/bulk-update.md)."""

from __future__ import annotations

from dicom_core.http.extended_tags import starting
from dicom_core.http.routing import Route
from dicom_core.operations.bulk_update import start_bulk_update

# Listed before the store routes (http/routes.py): "/studies/{study}" would take "$bulkUpdate" for a study UID.
ROUTES = [Route("bulk_update", "/studies/$bulkUpdate", ("POST",), starting(start_bulk_update))]

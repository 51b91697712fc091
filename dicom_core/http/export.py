"""POST /v2/export (also under /v2/partitions/{partition}): start an export operation (docs/export.md)."""

from __future__ import annotations

from dicom_core.http.extended_tags import starting
from dicom_core.http.routing import Route
from dicom_core.operations.export import start_export

ROUTES = [Route("export", "/export", ("POST",), starting(start_export))]

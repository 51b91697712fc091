"""Settings and environments of the service under test: fresh storage names in the test session's Azurite."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from dicom_core.settings import Connection, Settings

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def isolated_settings(connection_string: str, *, workspace: str = "testws", service: str = "testsvc") -> Settings:
    """Settings over the emulator at ``connection_string`` with a file system and tables no other test uses."""
    unique = uuid.uuid4().hex[:10]
    connection = Connection(connection_string=connection_string)
    return Settings(
        lake=connection,
        index=connection,
        file_system=f"t{unique}",
        workspace=workspace,
        service=service,
        table_prefix=f"t{unique}",
    )


def server_environment(settings: Settings) -> dict[str, str]:
    """The environment that makes ``python -m dicom_core serve`` use these settings."""
    environment = dict(os.environ)
    environment.update(
        DicomLake=settings.lake.connection_string,
        DICOM_FILESYSTEM=settings.file_system,
        DICOM_WORKSPACE=settings.workspace,
        DICOM_SERVICE=settings.service,
        DICOM_TABLE_PREFIX=settings.table_prefix,
    )
    return environment

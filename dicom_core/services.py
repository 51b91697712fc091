"""The storage a running service uses, opened once per process."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_core.settings import Settings
from dicom_core.storage import connections
from dicom_core.storage.index import Index
from dicom_core.storage.lake import Lake
from dicom_core.storage.layout import LakeLayout


@dataclass
class Services:
    settings: Settings
    lake: Lake
    index: Index
    layout: LakeLayout

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        """Connect to the lake and the index, creating the file system and tables when missing."""
        lake = Lake(
            connections.blob_service(settings.lake),
            connections.datalake_service(settings.lake),
            settings.file_system,
        )
        index = Index(connections.table_service(settings.index), settings.table_prefix)
        services = cls(settings, lake, index, LakeLayout(settings.workspace, settings.service))
        try:
            await lake.prepare()
            await index.prepare()
        except BaseException:
            await services.close()
            raise
        return services

    async def close(self) -> None:
        await self.lake.close()
        await self.index.close()

"""The storage a running service uses, opened once per process."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_core.settings import Settings
from dicom_core.storage import connections
from dicom_core.storage.changefeed_store import ChangeFeedStore
from dicom_core.storage.delete_journal import DeleteJournal
from dicom_core.storage.extended_tags_store import ExtendedTagStore
from dicom_core.storage.health_store import HealthStore
from dicom_core.storage.index import Index
from dicom_core.storage.lake import Lake
from dicom_core.storage.layout import LakeLayout
from dicom_core.storage.operations_store import OperationStore
from dicom_core.storage.tables import RequestStatistics
from dicom_core.storage.workitems import WorkitemStore


@dataclass
class Services:
    settings: Settings
    lake: Lake
    index: Index
    layout: LakeLayout
    changefeed: ChangeFeedStore
    deletes: DeleteJournal
    health: HealthStore
    statistics: RequestStatistics
    workitems: WorkitemStore
    extended_tags: ExtendedTagStore
    operations: OperationStore

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        """Connect to the lake and the index, creating the file system and tables when missing."""
        statistics = RequestStatistics()
        lake = Lake(
            connections.blob_service(settings.lake, statistics),
            connections.datalake_service(settings.lake, statistics),
            settings.file_system,
        )
        tables = connections.table_service(settings.index, statistics)
        index = Index(tables, settings.table_prefix)
        services = cls(
            settings,
            lake,
            index,
            LakeLayout(settings.workspace, settings.service),
            ChangeFeedStore(tables, settings.table_prefix),
            DeleteJournal(tables, settings.table_prefix),
            HealthStore(tables, settings.table_prefix),
            statistics,
            WorkitemStore(tables, settings.table_prefix),
            ExtendedTagStore(tables, settings.table_prefix),
            OperationStore(tables, settings.table_prefix),
        )
        try:
            await lake.prepare()
            await index.prepare()
            await services.changefeed.prepare()
            await services.deletes.prepare()
            await services.health.prepare()
            await services.workitems.prepare()
            await services.extended_tags.prepare()
            await services.operations.prepare()
        except BaseException:
            await services.close()
            raise
        return services

    async def close(self) -> None:
        await self.lake.close()
        await self.index.close()

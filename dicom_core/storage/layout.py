"""The data-lake contract: where each instance lives (docs/lake-layout.md).

::

    AHDS/{workspace}/dicom/{service}/{partition}/{study}/{series}/{sop}.dcm
    AHDS/{workspace}/dicom/{service}/healthCheck/...
    AHDS/{workspace}/dicom/{service}/analytics/{instances,series,studies}/   (Delta tables)
    AHDS/{workspace}/dicom/{service}/originals/{partition}/{study}/{series}/{sop}.dcm   (as first received,
                                                                         kept by a bulk update)

Only validated UIDs and partition names reach these functions; they check again
because a path that escapes the layout must be impossible, not unlikely.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_core.dicom.uids import is_valid_partition, is_valid_uid

HEALTH_FOLDER = "healthCheck"
ANALYTICS_FOLDER = "analytics"
ORIGINALS_FOLDER = "originals"


@dataclass(frozen=True)
class InstanceKey:
    """The identity of one stored instance."""

    partition: str
    study: str
    series: str
    sop: str


@dataclass(frozen=True)
class Scope:
    """What a request names: a study, a series of it (``series``) or one instance (``series`` and ``sop``)."""

    partition: str
    study: str
    series: str | None = None
    sop: str | None = None

    def describe(self) -> str:
        if self.sop:
            return f"instance {self.sop} of series {self.series} of study {self.study}"
        if self.series:
            return f"series {self.series} of study {self.study}"
        return f"study {self.study}"


@dataclass(frozen=True)
class LakeLayout:
    workspace: str
    service: str

    @property
    def root(self) -> str:
        return f"AHDS/{self.workspace}/dicom/{self.service}/"

    @property
    def health_folder(self) -> str:
        return f"{self.root}{HEALTH_FOLDER}/"

    @property
    def analytics_folder(self) -> str:
        return f"{self.root}{ANALYTICS_FOLDER}/"

    def partition_folder(self, partition: str) -> str:
        _check_partition(partition)
        return f"{self.root}{partition}/"

    def study_folder(self, partition: str, study: str) -> str:
        _check_uid(study)
        return f"{self.partition_folder(partition)}{study}/"

    def series_folder(self, partition: str, study: str, series: str) -> str:
        _check_uid(series)
        return f"{self.study_folder(partition, study)}{series}/"

    def instance_path(self, key: InstanceKey) -> str:
        _check_uid(key.sop)
        return f"{self.series_folder(key.partition, key.study, key.series)}{key.sop}.dcm"

    def original_path(self, key: InstanceKey) -> str:
        """Where a bulk update keeps the instance as first received: outside every partition, so never indexed."""
        return self._original_of(self.instance_path(key))

    def originals_folder(self, partition: str | None = None, study: str | None = None) -> str:
        """The folder of the originals of every partition, of one partition, or of one study of it."""
        if partition is None:
            return f"{self.root}{ORIGINALS_FOLDER}/"
        return self._original_of(self.study_folder(partition, study) if study else self.partition_folder(partition))

    def _original_of(self, contract_path: str) -> str:
        """The originals mirror the contract layout below their own folder."""
        return f"{self.originals_folder()}{contract_path.removeprefix(self.root)}"

    def parse_instance_path(self, path: str) -> InstanceKey | None:
        """The key of a contract path, or None for anything outside the layout (health files included)."""
        if not path.startswith(self.root) or not path.endswith(".dcm"):
            return None
        parts = path[len(self.root) : -len(".dcm")].split("/")
        if len(parts) != 4:
            return None
        partition, study, series, sop = parts
        # A reserved folder (healthCheck, analytics, originals) is not a valid partition name: never an instance.
        if not is_valid_partition(partition) or not all(map(is_valid_uid, (study, series, sop))):
            return None
        return InstanceKey(partition, study, series, sop)


def _check_uid(uid: str) -> None:
    if not is_valid_uid(uid):
        raise ValueError(f"refusing to build a lake path from the invalid UID {uid[:80]!r}")


def _check_partition(partition: str) -> None:
    if not is_valid_partition(partition):
        raise ValueError(f"refusing to build a lake path from the invalid partition name {partition[:80]!r}")

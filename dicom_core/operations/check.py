"""The archive's invariants, checked against storage (docs/reliability.md).

The lake is the truth; the index and the change feed must agree with it:

1. every instance entity has its file, with the ETag the entity records;
2. every file at a contract path has an instance entity (or a delete in progress);
3. every series and study entity counts exactly the instance entities under it, and a
   study's ModalitiesInStudy are those of its series;
4. every instance entity sits under a series and a study entity (so QIDO finds it), and
   no series or study entity is left without instances;
5. the change feed is gap-free, and it announces each current instance's version and
   nothing else as current;
6. no delete is left half-done in the delete journal;
7. every original a bulk update kept belongs to a stored instance, and every instance whose entry
   names its original has it (docs/bulk-update.md).

``check`` reads everything (files, entities, the feed): it is a tool for operators and
tests, never part of a request. ``python -m dicom_core check`` prints each violation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from dicom_core.dicom.levels import Level
from dicom_core.operations.reconcile import contract_files
from dicom_core.services import Services
from dicom_core.storage.changefeed_store import CURRENT
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import SeriesRecord, StudyRecord


@dataclass(frozen=True)
class Violation:
    """One broken invariant: which (its number in the module docstring), where, and what is wrong."""

    invariant: int
    where: str
    problem: str

    def __str__(self) -> str:
        return f"[{self.invariant}] {self.where}: {self.problem}"


def _bare(etag: str) -> str:
    return etag.strip('"')


async def check(services: Services) -> list[Violation]:
    """Every violation of the invariants in the whole archive (all partitions), in a stable order."""
    violations: list[Violation] = []
    files = {services.layout.parse_instance_path(file.path): file for file in await contract_files(services)}
    instances = {record.key: record async for record in services.index.all_instances()}
    journal = {row.key async for row in services.deletes.all_rows()}

    for key, record in instances.items():
        file = files.get(key)
        if file is None:
            violations.append(Violation(1, record.path, "indexed, but there is no file"))
        elif _bare(file.etag) != _bare(record.etag):
            violations.append(Violation(1, record.path, f"the file has ETag {file.etag}, the index records {record.etag}"))
    for key, file in files.items():
        if key not in instances and key not in journal:
            violations.append(Violation(2, file.path, "a file at a contract path that is not indexed"))

    violations += await _check_levels(services, instances.keys())
    violations += await _check_feed(services, instances)
    violations += [Violation(6, services.layout.instance_path(key), "an unfinished delete is in the journal") for key in journal]
    violations += await _check_originals(services, instances, journal)
    return sorted(violations, key=lambda violation: (violation.invariant, violation.where))


async def _check_originals(services: Services, instances: dict, journal: set[InstanceKey]) -> list[Violation]:
    layout = services.layout
    originals = {file.path async for file in services.lake.list(layout.originals_folder())}
    violations = [
        Violation(7, record.path, f"its entry names the original {record.original_path}, which is not there")
        for record in instances.values()
        if record.original_path and record.original_path not in originals
    ]
    owned = {layout.original_path(key) for key in instances.keys() | journal}
    violations += [Violation(7, path, "an original of an instance that is not stored") for path in originals - owned]
    return violations


async def _check_levels(services: Services, keys) -> list[Violation]:
    violations: list[Violation] = []
    per_series: Counter[tuple[str, str, str]] = Counter((key.partition, key.study, key.series) for key in keys)
    series_of_study: dict[tuple[str, str], set[str]] = defaultdict(set)
    for partition, study, series in per_series:
        series_of_study[(partition, study)].add(series)
    series_records: dict[tuple[str, str, str], SeriesRecord] = {
        (record.partition, record.study, record.series): record async for record in services.index.all_of(Level.SERIES)
    }
    study_records: dict[tuple[str, str], StudyRecord] = {
        (record.partition, record.study): record async for record in services.index.all_of(Level.STUDY)
    }
    for where, count in per_series.items():
        record = series_records.get(where)
        name = "/".join(where)
        if record is None:
            violations.append(Violation(4, name, f"{count} instance entities but no series entity"))
        elif record.instance_count != count:
            violations.append(Violation(3, name, f"the series counts {record.instance_count} instances, the index has {count}"))
    for where in series_records:
        if where not in per_series:
            violations.append(Violation(4, "/".join(where), "a series entity without instances"))
    for where, series in series_of_study.items():
        record = study_records.get(where)
        name = "/".join(where)
        instances = sum(per_series[(*where, uid)] for uid in series)
        if record is None:
            violations.append(Violation(4, name, f"{instances} instance entities but no study entity: QIDO cannot find it"))
            continue
        if (record.series_count, record.instance_count) != (len(series), instances):
            violations.append(
                Violation(
                    3,
                    name,
                    f"the study counts {record.series_count} series and {record.instance_count} instances, "
                    f"the index has {len(series)} and {instances}",
                )
            )
        modalities = sorted({series_records[(*where, uid)].modality for uid in series if (*where, uid) in series_records} - {""})
        if record.modalities != modalities:
            violations.append(Violation(3, name, f"ModalitiesInStudy is {record.modalities}, its series have {modalities}"))
    for where in study_records:
        if where not in series_of_study:
            violations.append(Violation(4, "/".join(where), "a study entity without instances"))
    return violations


async def _check_feed(services: Services, instances: dict) -> list[Violation]:
    violations: list[Violation] = []
    last, entries, pointers = await services.changefeed.snapshot()
    sequences = sorted(entry.sequence for entry in entries)
    if sequences != list(range(1, last + 1)):
        missing = sorted(set(range(1, last + 1)) - set(sequences))
        violations.append(Violation(5, "change feed", f"sequences 1..{last} are not all there (missing {missing[:10]})"))
    current_by_key: dict[InstanceKey, list[int]] = defaultdict(list)
    for entry in entries:
        if entry.state == CURRENT:
            current_by_key[entry.key].append(entry.sequence)
    by_key = {pointer.key: pointer for pointer in pointers}
    for key, record in instances.items():
        pointer = by_key.get(key)
        if pointer is None or pointer.deleted:
            violations.append(Violation(5, record.path, "stored, but the change feed does not announce it"))
        elif _bare(pointer.file_etag) != _bare(record.etag):
            violations.append(Violation(5, record.path, "the change feed announces another version of the file"))
        elif current_by_key.get(key) != [pointer.latest]:
            violations.append(Violation(5, record.path, f"entries {current_by_key.get(key)} are current, not {pointer.latest}"))
    for pointer in pointers:
        if not pointer.deleted and pointer.key not in instances:
            violations.append(Violation(5, services.layout.instance_path(pointer.key), "announced as current, but not stored"))
    return violations

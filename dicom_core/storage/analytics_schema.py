"""The columns of the analytics Delta tables, and the rows built from index records.

Column names follow Fabric's ``ImagingDicom`` bronze table (camelCase attribute
keywords, ``filePath``, ``metadata_string``) where it has one, so notebooks written
for Fabric's DICOM data transformation run against these tables unchanged.

Types are the ones every Delta reader knows at reader version 1: DA becomes
``date``, IS/US/SS/UL/SL ``long``, DS/FL/FD ``double``, TM ``string`` (Delta has no
time-of-day type; HHMMSS.FFFFFF text still sorts in time order), PN the
Alphabetic group, instants ``timestamp`` (UTC, microseconds). A value that does not
parse (a malformed DA, say) is null in the typed column and stays readable in
``metadata_string``.

This module and storage/analytics_tables.py are the only places that name Delta
columns; operations hand over index records and DICOM JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from dicom_core.storage.layout import InstanceKey, LakeLayout
from dicom_core.storage.records import InstanceRecord, SeriesRecord, StudyRecord

INSTANCES, SERIES, STUDIES = "instances", "series", "studies"
TABLE_NAMES = (INSTANCES, SERIES, STUDIES)

_TEXT, _TEXTS, _NAME, _DATE, _LONG, _DOUBLE, _DOUBLES = "text", "texts", "name", "date", "long", "double", "doubles"
_ARROW_TYPES = {
    _TEXT: pa.string(),
    _TEXTS: pa.list_(pa.string()),
    _NAME: pa.string(),
    _DATE: pa.date32(),
    _LONG: pa.int64(),
    _DOUBLE: pa.float64(),
    _DOUBLES: pa.list_(pa.float64()),
}
_TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class AttributeColumn:
    """A column holding one DICOM attribute's value(s)."""

    name: str
    tag: str  # the DICOM JSON key, e.g. "00080060"
    kind: str


def _columns(*specs: tuple[str, int, str]) -> dict[str, AttributeColumn]:
    return {name: AttributeColumn(name, f"{tag:08X}", kind) for name, tag, kind in specs}


ATTRIBUTE_COLUMNS = _columns(
    ("sopClassUid", 0x00080016, _TEXT),
    ("patientId", 0x00100020, _TEXT),
    ("patientName", 0x00100010, _NAME),
    ("patientBirthDate", 0x00100030, _DATE),
    ("patientSex", 0x00100040, _TEXT),
    ("patientAge", 0x00101010, _TEXT),
    ("patientWeight", 0x00101030, _DOUBLE),
    ("accessionNumber", 0x00080050, _TEXT),
    ("studyDate", 0x00080020, _DATE),
    ("studyTime", 0x00080030, _TEXT),
    ("studyDescription", 0x00081030, _TEXT),
    ("studyId", 0x00200010, _TEXT),
    ("referringPhysicianName", 0x00080090, _NAME),
    ("modality", 0x00080060, _TEXT),
    ("seriesDescription", 0x0008103E, _TEXT),
    ("seriesNumber", 0x00200011, _LONG),
    ("seriesDate", 0x00080021, _DATE),
    ("seriesTime", 0x00080031, _TEXT),
    ("bodyPartExamined", 0x00180015, _TEXT),
    ("protocolName", 0x00181030, _TEXT),
    ("performedProcedureStepStartDate", 0x00400244, _DATE),
    ("instanceNumber", 0x00200013, _LONG),
    ("contentDate", 0x00080023, _DATE),
    ("contentTime", 0x00080033, _TEXT),
    ("acquisitionDateTime", 0x0008002A, _TEXT),
    ("imageType", 0x00080008, _TEXTS),
    ("manufacturer", 0x00080070, _TEXT),
    ("manufacturerModelName", 0x00081090, _TEXT),
    ("institutionName", 0x00080080, _TEXT),
    ("stationName", 0x00081010, _TEXT),
    ("sliceThickness", 0x00180050, _DOUBLE),
    ("spacingBetweenSlices", 0x00180088, _DOUBLE),
    ("kvp", 0x00180060, _DOUBLE),
    ("pixelSpacing", 0x00280030, _DOUBLES),
    ("photometricInterpretation", 0x00280004, _TEXT),
    ("bitsAllocated", 0x00280100, _LONG),
    ("rows", 0x00280010, _LONG),
    ("columns", 0x00280011, _LONG),
)
_STUDY_ATTRIBUTES = (
    "patientId",
    "patientName",
    "patientBirthDate",
    "patientSex",
    "accessionNumber",
    "studyDate",
    "studyTime",
    "studyDescription",
    "studyId",
    "referringPhysicianName",
)
_SERIES_ATTRIBUTES = (
    "modality",
    "seriesDescription",
    "seriesNumber",
    "seriesDate",
    "seriesTime",
    "bodyPartExamined",
    "manufacturerModelName",
    "performedProcedureStepStartDate",
)


def extended_query_tag_columns() -> tuple[AttributeColumn, ...]:
    """Extension point: one column per Ready extended query tag.

    Extended query tags have not landed yet. When they do, return a column per
    Ready tag here (named after its keyword, typed from its VR); the tables gain the
    column at the next write (writes merge new columns into the schema) and rebuild
    fills it for instances stored before.
    """
    return ()


def _field(column: AttributeColumn) -> pa.Field:
    return pa.field(column.name, _ARROW_TYPES[column.kind])


def _identity_fields(*names: str) -> list[pa.Field]:
    return [pa.field(name, pa.string(), nullable=False) for name in names]


def instance_schema() -> pa.Schema:
    attributes = [column for name, column in ATTRIBUTE_COLUMNS.items() if name != "sopClassUid"]
    return pa.schema(
        [
            *_identity_fields("partitionName", "studyInstanceUid", "seriesInstanceUid", "sopInstanceUid"),
            pa.field("sopClassUid", pa.string()),
            *map(_field, attributes),
            *map(_field, extended_query_tag_columns()),
            pa.field("filePath", pa.string(), nullable=False),
            pa.field("fileSize", pa.int64()),
            pa.field("transferSyntaxUid", pa.string()),
            pa.field("numberOfFrames", pa.int64()),
            pa.field("storedAt", _TIMESTAMP),
            pa.field("lastChangedAt", _TIMESTAMP),
            pa.field("metadata_string", pa.string()),
        ]
    )


def series_schema() -> pa.Schema:
    return pa.schema(
        [
            *_identity_fields("partitionName", "studyInstanceUid", "seriesInstanceUid"),
            *(_field(ATTRIBUTE_COLUMNS[name]) for name in _SERIES_ATTRIBUTES),
            pa.field("numberOfSeriesRelatedInstances", pa.int64()),
            pa.field("folderPath", pa.string(), nullable=False),
            pa.field("lastChangedAt", _TIMESTAMP),
        ]
    )


def study_schema() -> pa.Schema:
    return pa.schema(
        [
            *_identity_fields("partitionName", "studyInstanceUid"),
            *(_field(ATTRIBUTE_COLUMNS[name]) for name in _STUDY_ATTRIBUTES),
            pa.field("modalitiesInStudy", pa.list_(pa.string())),
            pa.field("numberOfStudyRelatedSeries", pa.int64()),
            pa.field("numberOfStudyRelatedInstances", pa.int64()),
            pa.field("folderPath", pa.string(), nullable=False),
            pa.field("lastChangedAt", _TIMESTAMP),
        ]
    )


SCHEMAS = {INSTANCES: instance_schema, SERIES: series_schema, STUDIES: study_schema}
# The column that identifies a row: an instance by its file, a series or study by its folder.
KEY_COLUMNS = {INSTANCES: "filePath", SERIES: "folderPath", STUDIES: "folderPath"}


# -- values ------------------------------------------------------------------------------------


def _values(model: dict, tag: str) -> list:
    element = model.get(tag)
    return list(element.get("Value") or []) if isinstance(element, dict) else []


def _date(text: Any) -> date | None:
    try:
        return datetime.strptime(str(text).strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _number(value: Any, kind: type) -> Any:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _name(value: Any) -> str | None:
    return value.get("Alphabetic") if isinstance(value, dict) else None


def attribute_value(model: dict, column: AttributeColumn) -> Any:
    """The value of ``column`` in DICOM JSON ``model`` (PS3.18 F.2), typed for its column."""
    values = _values(model, column.tag)
    if column.kind == _TEXTS:
        return [str(value) for value in values] or None
    if column.kind == _DOUBLES:
        return [_number(value, float) for value in values] or None
    if not values or values[0] is None:
        return None
    first = values[0]
    if column.kind == _NAME:
        return _name(first)
    if column.kind == _DATE:
        return _date(first)
    if column.kind == _LONG:
        return _number(first, int)
    if column.kind == _DOUBLE:
        return _number(first, float)
    return str(first)


def without_bulk_data(model: dict) -> dict:
    """DICOM JSON without bulk data: elements given by BulkDataURI or InlineBinary are left out, in sequences too."""
    kept: dict = {}
    for tag, element in model.items():
        if "BulkDataURI" in element or "InlineBinary" in element:
            continue
        if element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [without_bulk_data(item) for item in element["Value"]]}
        kept[tag] = element
    return kept


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- rows from index records ---------------------------------------------------------------------


def instance_row(instance: InstanceRecord, model: dict, changed_at: datetime | None) -> dict[str, Any]:
    """The instances-table row of an instance and its DICOM JSON ``model``."""
    key = instance.key
    row: dict[str, Any] = {
        "partitionName": key.partition,
        "studyInstanceUid": key.study,
        "seriesInstanceUid": key.series,
        "sopInstanceUid": key.sop,
    }
    for column in (*ATTRIBUTE_COLUMNS.values(), *extended_query_tag_columns()):
        row[column.name] = attribute_value(model, column)
    row["sopClassUid"] = instance.sop_class_uid or row["sopClassUid"]
    stored_at = _utc(instance.stored_at)
    row.update(
        filePath=instance.path,
        fileSize=instance.size,
        transferSyntaxUid=instance.transfer_syntax,
        numberOfFrames=instance.number_of_frames,
        storedAt=stored_at,
        lastChangedAt=_utc(changed_at) or stored_at,
        metadata_string=json.dumps(without_bulk_data(model), separators=(",", ":")),
    )
    return row


def series_row(series: SeriesRecord, layout: LakeLayout, changed_at: datetime | None) -> dict[str, Any]:
    """The series-table row of a series."""
    row: dict[str, Any] = {
        "partitionName": series.partition,
        "studyInstanceUid": series.study,
        "seriesInstanceUid": series.series,
    }
    row.update({name: attribute_value(series.attributes, ATTRIBUTE_COLUMNS[name]) for name in _SERIES_ATTRIBUTES})
    row["modality"] = series.modality or row["modality"]
    row.update(
        numberOfSeriesRelatedInstances=series.instance_count,
        folderPath=layout.series_folder(series.partition, series.study, series.series),
        lastChangedAt=_utc(changed_at),
    )
    return row


def study_row(study: StudyRecord, layout: LakeLayout, changed_at: datetime | None) -> dict[str, Any]:
    """The studies-table row of a study; ModalitiesInStudy from its per-modality series counts."""
    row: dict[str, Any] = {"partitionName": study.partition, "studyInstanceUid": study.study}
    row.update({name: attribute_value(study.attributes, ATTRIBUTE_COLUMNS[name]) for name in _STUDY_ATTRIBUTES})
    row.update(
        modalitiesInStudy=study.modalities,
        numberOfStudyRelatedSeries=study.series_count,
        numberOfStudyRelatedInstances=study.instance_count,
        folderPath=layout.study_folder(study.partition, study.study),
        lastChangedAt=_utc(changed_at),
    )
    return row


def instance_key_value(layout: LakeLayout, key: InstanceKey) -> str:
    """The key column value (filePath) of an instance's row."""
    return layout.instance_path(key)


def series_key_value(layout: LakeLayout, key: InstanceKey) -> str:
    return layout.series_folder(key.partition, key.study, key.series)


def study_key_value(layout: LakeLayout, key: InstanceKey) -> str:
    return layout.study_folder(key.partition, key.study)


def table(name: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table of table ``name``'s schema."""
    return pa.Table.from_pylist(list(rows), schema=SCHEMAS[name]())

"""Every Table Storage key this service builds, and the key ranges it queries (docs/index-design.md).

Keys join UIDs with ``|``, which no UID or partition name contains, so the entities of a
study (or of a series of it) are one contiguous key range. Azure Table keys must not
contain ``/ \\ # ?`` or control characters; validated UIDs and partition names never do.
"""

from __future__ import annotations

from dicom_core.storage.layout import InstanceKey

SEPARATOR = "|"
AFTER_SEPARATOR = chr(ord(SEPARATOR) + 1)


def joined(*parts: str) -> str:
    """Parts of a key joined by the separator."""
    return SEPARATOR.join(parts)


def study_partition_key(partition: str, study: str) -> str:
    """The PartitionKey of a study's series, instances and delete-journal rows."""
    return joined(partition, study)


def instance_row_key(series: str, sop: str) -> str:
    """The RowKey of an instance within its study's PartitionKey."""
    return joined(series, sop)


def instance_keys(key: InstanceKey) -> tuple[str, str]:
    """(PartitionKey, RowKey) of an instance in the tables keyed like the instances table."""
    return study_partition_key(key.partition, key.study), instance_row_key(key.series, key.sop)


_UID_COLUMNS = ("PartitionName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def instance_identity(key: InstanceKey) -> dict[str, str]:
    """The keys and UID columns of an entity keyed like the instances table (instances, delete journal)."""
    partition_key, row_key = instance_keys(key)
    uids = dict(zip(_UID_COLUMNS, (key.partition, key.study, key.series, key.sop), strict=True))
    return {"PartitionKey": partition_key, "RowKey": row_key, **uids}


def key_of(entity: dict) -> InstanceKey:
    """The instance an entity written with ``instance_identity`` is about."""
    return InstanceKey(*(entity[column] for column in _UID_COLUMNS))


UID_COLUMNS = list(_UID_COLUMNS)
"""The UID columns, for reads that select only some columns."""


def children_range(parent: str) -> tuple[str, str]:
    """Keys (from exclusive, to exclusive) of every key that starts with ``parent|``."""
    return f"{parent}{SEPARATOR}", f"{parent}{AFTER_SEPARATOR}"


def range_filter(column: str, low: str, high: str, *, inclusive_low: bool = False) -> tuple[str, dict[str, str]]:
    """An OData filter ``low < column < high`` (``<=`` at the low end when inclusive) and its parameters."""
    operator = "ge" if inclusive_low else "gt"
    name = column.lower()
    return f"{column} {operator} @{name}_low and {column} lt @{name}_high", {f"{name}_low": low, f"{name}_high": high}


EXTENDED_TAGS_PARTITION = "tags"
"""The PartitionKey of every extended query tag (RowKey: its tag as 8 hex digits): one query lists them all."""

OPERATIONS_PARTITION = "operations"
"""The PartitionKey of every operation (RowKey: its id)."""

PENDING_OPERATIONS_PARTITION = "pending"
"""The PartitionKey of the operations not finished yet (RowKey: the id), so workers never scan finished ones."""


def instance_path_key(key: InstanceKey) -> str:
    """An instance's partition and UIDs as one key: the RowKey of its errors of an extended query tag."""
    return joined(key.partition, key.study, key.series, key.sop)


def parse_instance_path_key(text: str) -> InstanceKey:
    return InstanceKey(*text.split(SEPARATOR))

"""Validation of the identifiers that become lake paths and table keys."""

from __future__ import annotations

import re

# PS3.5 9.1: a UID is digits and dots, at most 64 characters, no empty component.
# Leading zeros are tolerated: real archives hold them and they cannot escape a path.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PARTITION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Folders beside the partitions in the lake layout: a partition of that name would share them.
RESERVED_PARTITIONS = {
    "healthCheck": "the lake folder of that name holds the health check's file",
    "analytics": "the lake folder of that name holds the analytics Delta tables",
    "originals": "the lake folder of that name holds the originals of instances changed by a bulk update",
}


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid UID, or None when it is."""
    if not value:
        return "it is empty"
    if len(value) > 64:
        return f"it has {len(value)} characters, more than 64"
    if not _UID.match(value):
        return "it must be digits separated by single dots (PS3.5 9.1)"
    return None


def is_valid_uid(value: str) -> bool:
    return uid_problem(value) is None


def partition_problem(name: str) -> str | None:
    """Why ``name`` is not a valid partition name, or None when it is."""
    if not _PARTITION.match(name) or name in {".", ".."}:
        return "use 1-64 letters, digits, '.', '-' or '_'"
    if name in RESERVED_PARTITIONS:
        return f"it is reserved: {RESERVED_PARTITIONS[name]}"
    return None


def is_valid_partition(name: str) -> bool:
    """Partition names are 1-64 letters, digits, '.', '-' or '_', and not a reserved folder's name (docs/lake-layout.md)."""
    return partition_problem(name) is None

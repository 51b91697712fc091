"""Validation of the identifiers that become lake paths and table keys."""

from __future__ import annotations

import re

# PS3.5 9.1: a UID is digits and dots, at most 64 characters, no empty component.
# Leading zeros are tolerated: real archives hold them and they cannot escape a path.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PARTITION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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


def is_valid_partition(name: str) -> bool:
    """Partition names are 1-64 letters, digits, '.', '-' or '_' (docs/lake-layout.md)."""
    # "healthCheck" is the health folder beside the partitions in the lake layout.
    return bool(_PARTITION.match(name)) and name not in {".", "..", "healthCheck"}

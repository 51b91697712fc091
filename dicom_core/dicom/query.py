"""QIDO-RS query parameters (PS3.18 8.3.4, 10.6.1) parsed into a search.

``parse_query`` turns the query string of a search into a ``SearchQuery``: the matching
keys (by keyword or tag, from the one table in dicom/levels.py, and the extended query
tags the caller passes in, dicom/extended_tags.py) with their matching rule
(dicom/constraints.py, PS3.4 C.2.2.2), the attributes to return, and the page.

Pure functions: no storage, no HTTP. Malformed input raises ``InvalidQuery`` with a
message written for the client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from dicom_core.dicom.constraints import (
    Constraint,
    IntegerMatch,
    NameMatch,
    NumberMatch,
    TemporalMatch,
    TextMatch,
    UidList,
)
from dicom_core.dicom.extended_tags import FLOAT_VRS, INTEGER_VRS, parse_number
from dicom_core.dicom.levels import KEYS, KEYS_BY_NAME, LEVEL_TAGS, Level, MatchingKey
from dicom_core.dicom.matching import has_wildcard, name_words, normalize_name, parse_integer, temporal_interval
from dicom_core.dicom.uids import uid_problem


class InvalidQuery(ValueError):
    """A query parameter the service cannot honour; the message names it and says why."""


RESOURCES = {Level.STUDY: "/studies", Level.SERIES: "/series", Level.INSTANCE: "/instances"}


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(tag_for_keyword(keyword) for keyword in keywords)


# PS3.18 10.6.3.3, Tables 10.6.3-3 to 10.6.3-5: what every match returns without includefield.
DEFAULT_RETURN: dict[Level, frozenset[int]] = {
    Level.STUDY: _tags(
        "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
        "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL", "PatientName",
        "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: _tags(
        "SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
        "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "RequestAttributesSequence",
    ),
    Level.INSTANCE: _tags(
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
        "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
    ),
}  # fmt: skip
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 100_000
_CONTROL_PARAMETERS = {"includefield", "limit", "offset", "fuzzymatching"}

# -- the query ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    """A parsed QIDO-RS request: what to match, what to return, which page."""

    level: Level
    constraints: tuple[Constraint, ...]
    returned: frozenset[int]  # matched keys and includefield, beyond the defaults
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    limit_capped: bool = False  # the client asked for more than the maximum (DICOM_MAX_SEARCH_RESULTS)
    study: str | None = None  # from the URL
    series: str | None = None
    by_level: dict[Level, tuple[Constraint, ...]] = field(default_factory=dict, compare=False)
    # The extended query tags each level's entity keeps, beyond LEVEL_TAGS.
    extended_tags: Mapping[Level, frozenset[int]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for level in Level:
            self.by_level[level] = tuple(c for c in self.constraints if c.key.level == level)

    def level_tags(self, level: Level) -> frozenset[int]:
        """The tags ``level``'s entity keeps: its own and its extended query tags."""
        return LEVEL_TAGS[level] | self.extended_tags.get(level, frozenset())

    def wanted(self, level: Level) -> frozenset[int] | None:
        """The tags a match returns from ``level``'s entity; None means all it keeps (includefield=all)."""
        shown = level >= self._first_returned_level
        if self.include_all:
            return None if shown else frozenset()
        defaults = DEFAULT_RETURN[level] if shown else frozenset()
        if level == Level.INSTANCE:  # the instance keeps the whole data set: anything no other level keeps
            others = self.level_tags(Level.STUDY) | self.level_tags(Level.SERIES)
            return defaults | (self.returned - others) | (self.returned & self.level_tags(level))
        return defaults | (self.returned & self.level_tags(level))

    @property
    def _first_returned_level(self) -> Level:
        """PS3.18 10.6.3.3: a search within a study (series) leaves out study (series) attributes."""
        if self.series is not None:
            return Level.INSTANCE
        if self.study is not None:
            return Level.SERIES
        return Level.STUDY


def _resolve_tag(name: str, purpose: str) -> int:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return int(name, 16)
    if "." in name:
        raise InvalidQuery(f"{purpose} {name[:80]!r}: attributes inside sequences are not supported")
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidQuery(f"{purpose} {name[:80]!r} is neither a DICOM keyword nor a tag (8 hexadecimal digits)")
    return tag


def _describe(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"{keyword} ({tag:08X})" if keyword else f"{tag:08X}"


def _matching_key(name: str, level: Level, keys: Mapping[str, MatchingKey]) -> MatchingKey:
    tag = _resolve_tag(name, "query parameter")
    key = keys.get(f"{tag:08X}")
    if key is None:
        supported = ", ".join(k.keyword for k in KEYS if k.level <= level)
        supported += "".join(f", {k.keyword}" for hex_, k in keys.items() if k.extended and hex_ == k.hex and k.level <= level)
        raise InvalidQuery(f"{_describe(tag)} is not a supported matching key for {level.label} searches; supported: {supported}")
    if key.level > level:
        raise InvalidQuery(
            f"{key.keyword} is {'an' if key.level == Level.INSTANCE else 'a'} {key.level.label}-level key and cannot "
            f"match {level.label} results; "
            f"search {RESOURCES[key.level]} instead"
        )
    return key


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in re.split(r"[\\,]", value)]


def constraint_for(key: MatchingKey, value: str, fuzzy: bool) -> Constraint | None:
    """The constraint of ``key=value``, or None when the value asks only to return the attribute."""
    if value.strip() in ("", "*"):
        return None  # PS3.4 C.2.2.2.3: universal matching
    where = f"{key.keyword}={value[:80]!r}"
    if key.vr == "UI":
        uids = _split_list(value)
        for uid in uids:
            if has_wildcard(uid):
                raise InvalidQuery(f"{where}: UIDs cannot hold wildcards; give one UID or a list separated by '\\' or ','")
            if problem := uid_problem(uid):
                raise InvalidQuery(f"{where}: {uid[:80]!r} is not a valid UID: {problem}")
        return UidList(key, tuple(dict.fromkeys(uids)))
    if key.vr in ("DA", "TM", "DT"):
        try:
            interval = temporal_interval(key.vr, value.strip())
        except ValueError as error:
            raise InvalidQuery(f"{where}: {error}") from None
        return TemporalMatch(key, interval, open_ended=value.strip().startswith("-") or value.strip().endswith("-"))
    if key.vr == "IS":
        try:
            return IntegerMatch(key, parse_integer(value))
        except ValueError as error:
            raise InvalidQuery(f"{where}: {error}; wildcards are not supported for integers") from None
    if key.vr in FLOAT_VRS | INTEGER_VRS:
        return _number_match(key, value.strip(), where)
    if key.vr == "PN":
        pattern = normalize_name(value).rstrip("^")
        if fuzzy and not name_words(pattern):
            return None
        return NameMatch(key, pattern, fuzzy)
    patterns = _split_list(value) if key.vr == "CS" else [value.strip()]
    if any(not pattern for pattern in patterns):
        raise InvalidQuery(f"{where}: a list has an empty item")
    return TextMatch(key, tuple(dict.fromkeys(patterns)))


def _number_match(key: MatchingKey, text: str, where: str) -> NumberMatch:
    """One number or a range ``a-b``, ``a-``, ``-b``; a text that is a number is that number (``-5`` is minus five)."""
    try:
        number = parse_number(text)
        return NumberMatch(key, number, number)
    except ValueError:
        pass
    ends = re.fullmatch(r"([^-]\S*?|-[^-]\S*?)?-([^-]\S*|-[^-]\S*)?", text)
    try:
        if ends is None or not any(ends.groups()):
            raise ValueError("give a number or a range a-b, a- or -b")
        low, high = (parse_number(end) if end else None for end in ends.groups())
    except ValueError as error:
        raise InvalidQuery(f"{where}: {error}; wildcards are not supported for numbers") from None
    if low is not None and high is not None and low > high:
        raise InvalidQuery(f"{where}: the range starts after it ends")
    return NumberMatch(key, low, high)


def _number(name: str, text: str, maximum: int | None = None) -> int:
    if not text.strip().isdigit():
        raise InvalidQuery(f"{name}={text[:40]!r} is not a non-negative integer")
    number = int(text)
    if maximum is not None and number > maximum:
        raise InvalidQuery(f"{name}={number} is larger than the maximum {maximum}")
    return number


def parse_query(
    parameters: Sequence[tuple[str, str]],
    level: Level,
    study: str | None = None,
    series: str | None = None,
    max_limit: int = MAX_LIMIT,
    keys: Mapping[str, MatchingKey] = KEYS_BY_NAME,
) -> SearchQuery:
    """The search that a QIDO-RS query string asks for (PS3.18 8.3.4); ``study``/``series`` come from the URL.

    ``keys`` are the matching keys by keyword and by tag: ``KEYS_BY_NAME`` and the searchable extended query tags.
    """
    seen: set[str] = set()
    fuzzy_text = "false"
    includes: list[str] = []
    controls: dict[str, str] = {}
    keyed: list[tuple[MatchingKey, str]] = []
    for name, value in parameters:
        lowered = name.lower()
        if lowered == "includefield":
            includes += [item.strip() for item in value.split(",") if item.strip()]
            continue
        if lowered in _CONTROL_PARAMETERS:
            if lowered in controls:
                raise InvalidQuery(f"query parameter {name!r} is given more than once")
            controls[lowered] = value
            continue
        key = _matching_key(name, level, keys)
        if key.keyword in seen:
            raise InvalidQuery(f"matching key {key.keyword} is given more than once")
        seen.add(key.keyword)
        keyed.append((key, value))

    fuzzy_text = controls.get("fuzzymatching", "false").strip().lower()
    if fuzzy_text not in ("true", "false"):
        raise InvalidQuery(f"fuzzymatching={controls['fuzzymatching'][:40]!r}: use true or false")
    fuzzy = fuzzy_text == "true"
    limit = _number("limit", controls["limit"]) if "limit" in controls else DEFAULT_LIMIT
    if "limit" in controls and limit == 0:
        raise InvalidQuery("limit=0: ask for at least one result")
    offset = _number("offset", controls["offset"], MAX_OFFSET) if "offset" in controls else 0

    constraints: list[Constraint] = []
    returned: set[int] = set()
    for key, value in keyed:
        returned.add(key.tag)
        constraint = constraint_for(key, value, fuzzy)
        if constraint is not None:
            constraints.append(constraint)
    for uid, keyword in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID")):
        if uid is not None:
            constraints.append(UidList(KEYS_BY_NAME[keyword], (uid,)))

    include_all = any(item.lower() == "all" for item in includes)
    for item in includes:
        if item.lower() != "all":
            tag = _resolve_tag(item, "includefield")
            if not keyword_for_tag(tag) and f"{tag:08X}" not in keys:
                raise InvalidQuery(f"includefield {item[:80]!r} names no attribute of the DICOM dictionary")
            returned.add(tag)
    return SearchQuery(
        level=level,
        constraints=tuple(constraints),
        returned=frozenset(returned),
        include_all=include_all,
        limit=min(limit, max_limit),
        offset=offset,
        limit_capped=limit > max_limit,
        study=study,
        series=series,
        extended_tags={at: frozenset(key.tag for key in keys.values() if key.extended and key.level == at) for at in Level},
    )

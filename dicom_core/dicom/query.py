"""QIDO-RS query parameters (PS3.18 8.3.4, 10.6.1) as constraints that match stored DICOM JSON.

``parse_query`` turns the query string of a search into a ``SearchQuery``: the matching
keys (by keyword or tag) with their matching rule (PS3.4 C.2.2.2), the attributes to
return, and the page. Each constraint also says how the lookup table can find its
candidates (``LookupPlan``: ranges of normalized values and a rough cost) and which
lookup entries an attribute value gets (``index_entries``), so that the write side
and the read side of the index normalize values with the same functions.

Pure functions: no storage, no HTTP. Malformed input raises ``InvalidQuery`` with a
message written for the client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from dicom_core.dicom.levels import INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS
from dicom_core.dicom.matching import (
    Interval,
    has_wildcard,
    integer_key,
    literal_prefix,
    name_words,
    normalize_name,
    parse_integer,
    person_name_groups,
    person_name_whole,
    temporal_interval,
    temporal_point,
    wildcard_match,
)
from dicom_core.dicom.uids import uid_problem


class InvalidQuery(ValueError):
    """A query parameter the service cannot honour; the message names it and says why."""


class Level(IntEnum):
    """The levels of the DICOM information model, from the top."""

    STUDY = 0
    SERIES = 1
    INSTANCE = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class MatchingKey:
    """A supported matching key. ``broad`` keys have few distinct values: poor drivers of a search."""

    keyword: str
    tag: int
    vr: str
    level: Level
    broad: bool = False

    @property
    def hex(self) -> str:
        return f"{self.tag:08X}"


MODALITIES_IN_STUDY = 0x00080061
NUMBER_OF_STUDY_RELATED_SERIES = 0x00201206
NUMBER_OF_STUDY_RELATED_INSTANCES = 0x00201208
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209
INSTANCE_AVAILABILITY = 0x00080056
RETRIEVE_URL = 0x00081190

KEYS: tuple[MatchingKey, ...] = (
    MatchingKey("StudyInstanceUID", 0x0020000D, "UI", Level.STUDY),
    MatchingKey("StudyDate", 0x00080020, "DA", Level.STUDY),
    MatchingKey("StudyTime", 0x00080030, "TM", Level.STUDY),
    MatchingKey("AccessionNumber", 0x00080050, "SH", Level.STUDY),
    MatchingKey("ModalitiesInStudy", MODALITIES_IN_STUDY, "CS", Level.STUDY, broad=True),
    MatchingKey("ReferringPhysicianName", 0x00080090, "PN", Level.STUDY),
    MatchingKey("PatientName", 0x00100010, "PN", Level.STUDY),
    MatchingKey("PatientID", 0x00100020, "LO", Level.STUDY),
    MatchingKey("PatientBirthDate", 0x00100030, "DA", Level.STUDY),
    MatchingKey("PatientSex", 0x00100040, "CS", Level.STUDY, broad=True),
    MatchingKey("StudyID", 0x00200010, "SH", Level.STUDY),
    MatchingKey("StudyDescription", 0x00081030, "LO", Level.STUDY),
    MatchingKey("SeriesInstanceUID", 0x0020000E, "UI", Level.SERIES),
    MatchingKey("Modality", 0x00080060, "CS", Level.SERIES, broad=True),
    MatchingKey("SeriesNumber", 0x00200011, "IS", Level.SERIES, broad=True),
    MatchingKey("SeriesDescription", 0x0008103E, "LO", Level.SERIES),
    MatchingKey("BodyPartExamined", 0x00180015, "CS", Level.SERIES, broad=True),
    MatchingKey("PerformedProcedureStepStartDate", 0x00400244, "DA", Level.SERIES),
    MatchingKey("PerformedProcedureStepStartTime", 0x00400245, "TM", Level.SERIES),
    MatchingKey("ManufacturerModelName", 0x00081090, "LO", Level.SERIES),
    MatchingKey("SOPInstanceUID", 0x00080018, "UI", Level.INSTANCE),
    MatchingKey("SOPClassUID", 0x00080016, "UI", Level.INSTANCE, broad=True),
    MatchingKey("InstanceNumber", 0x00200013, "IS", Level.INSTANCE, broad=True),
    MatchingKey("AcquisitionDateTime", 0x0008002A, "DT", Level.INSTANCE),
)
_KEYS_BY_NAME = {key.keyword: key for key in KEYS} | {key.hex: key for key in KEYS}
RESOURCES = {Level.STUDY: "/studies", Level.SERIES: "/series", Level.INSTANCE: "/instances"}
UID_KEYS = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID", Level.INSTANCE: "SOPInstanceUID"}


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
# The attributes each level's index entity keeps (stored, or computed from its counts).
LEVEL_TAGS: dict[Level, frozenset[int]] = {
    Level.STUDY: frozenset(STUDY_TAGS) | {MODALITIES_IN_STUDY, NUMBER_OF_STUDY_RELATED_SERIES, NUMBER_OF_STUDY_RELATED_INSTANCES},
    Level.SERIES: frozenset(SERIES_TAGS) | {NUMBER_OF_SERIES_RELATED_INSTANCES},
    Level.INSTANCE: frozenset(INSTANCE_TAGS),
}

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 100_000
_CONTROL_PARAMETERS = {"includefield", "limit", "offset", "fuzzymatching"}

# How expensive a constraint is as the driver of a search (the lookup ranges it reads), lowest first.
COST_UID = 0
COST_EXACT = 1
COST_LONG_PREFIX = 2
COST_RANGE = 3
COST_BROAD = 4
COST_OPEN_RANGE = 5
COST_LEADING_WILDCARD = 9


# -- what the index reads ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ValueRange:
    """Normalized values the lookup table holds: one ``exact`` value, a ``prefix``, or ``low``..``high``."""

    kind: str  # "exact", "prefix" or "between"
    low: str
    high: str = ""


@dataclass(frozen=True)
class LookupPlan:
    """How to find a constraint's candidates: ranges of one lookup attribute, and a filter of their values."""

    attribute: str
    ranges: tuple[ValueRange, ...]
    cost: int
    accepts: Callable[[str], bool] | None = None  # None: every value in the ranges is a candidate


def words_attribute(keyword: str) -> str:
    """The lookup attribute holding the words of a person-name key (fuzzy matching)."""
    return f"{keyword}.words"


def _pattern_range(pattern: str) -> tuple[ValueRange, int]:
    if not has_wildcard(pattern):
        return ValueRange("exact", pattern), COST_EXACT
    prefix = literal_prefix(pattern)
    if not prefix:
        return ValueRange("prefix", ""), COST_LEADING_WILDCARD
    return ValueRange("prefix", prefix), COST_LONG_PREFIX if len(prefix) >= 3 else COST_RANGE


# -- constraints -----------------------------------------------------------------------------------


def _values(element: dict | None) -> list:
    return list(element.get("Value") or []) if element else []


@dataclass(frozen=True)
class UidList:
    """List of UID matching (PS3.4 C.2.2.2.2): any of the UIDs."""

    key: MatchingKey
    uids: tuple[str, ...]

    def matches(self, element: dict | None) -> bool:
        return any(str(value) in self.uids for value in _values(element))

    def lookup(self) -> LookupPlan:
        return LookupPlan(self.key.keyword, tuple(ValueRange("exact", uid) for uid in sorted(self.uids)), COST_UID)


@dataclass(frozen=True)
class TextMatch:
    """Single value or wildcard matching of text, case-sensitive; CS keys take a list (any of)."""

    key: MatchingKey
    patterns: tuple[str, ...]

    def matches(self, element: dict | None) -> bool:
        return any(self.accepts(str(value).strip()) for value in _values(element))

    def accepts(self, value: str) -> bool:
        return any(wildcard_match(pattern, value) for pattern in self.patterns)

    def lookup(self) -> LookupPlan:
        planned = [_pattern_range(pattern) for pattern in self.patterns]
        cost = max(cost for _, cost in planned)
        if self.key.broad:
            cost = max(cost, COST_BROAD)
        return LookupPlan(self.key.keyword, tuple(sorted({r for r, _ in planned}, key=lambda r: r.low)), cost, self.accepts)


@dataclass(frozen=True)
class NameMatch:
    """Person names (PS3.4 C.2.2.2.1, C.2.2.2.4), case- and accent-insensitive.

    A value matches when one of its groups (alphabetic, ideographic, phonetic) matches the
    pattern; a pattern holding ``=`` is matched against all groups as ``A=I=P``. With
    fuzzy matching every word of the pattern must begin a word of the name.
    """

    key: MatchingKey
    pattern: str  # normalized
    fuzzy: bool

    @property
    def words(self) -> list[str]:
        return name_words(self.pattern)

    def matches(self, element: dict | None) -> bool:
        return any(self._matches_value(value) for value in _values(element))

    def _matches_value(self, value: dict | str) -> bool:
        if self.fuzzy:
            stored = [word for group in person_name_groups(value) for word in name_words(group)]
            return all(any(wildcard_match(f"{word}*", candidate) for candidate in stored) for word in self.words)
        if "=" in self.pattern:
            return wildcard_match(self.pattern, person_name_whole(value))
        return any(wildcard_match(self.pattern, group) for group in person_name_groups(value))

    def lookup(self) -> LookupPlan:
        if self.fuzzy:
            word = max(self.words, key=lambda word: len(literal_prefix(word)))
            prefix = literal_prefix(word)
            cost = COST_LEADING_WILDCARD if not prefix else COST_LONG_PREFIX if len(prefix) >= 3 else COST_RANGE
            return LookupPlan(
                words_attribute(self.key.keyword),
                (ValueRange("prefix", prefix),),
                cost,
                lambda value: wildcard_match(f"{word}*", value),
            )
        if "=" in self.pattern:
            # Groups are indexed one by one: find the alphabetic group by the text before "=".
            prefix = literal_prefix(self.pattern).split("=")[0]
            cost = COST_LEADING_WILDCARD if not prefix else COST_LONG_PREFIX
            return LookupPlan(self.key.keyword, (ValueRange("prefix", prefix),), cost)
        value_range, cost = _pattern_range(self.pattern)
        return LookupPlan(self.key.keyword, (value_range,), cost, lambda value: wildcard_match(self.pattern, value))


@dataclass(frozen=True)
class TemporalMatch:
    """Single value or range matching of DA, TM and DT (PS3.4 C.2.2.2.5)."""

    key: MatchingKey
    interval: Interval
    open_ended: bool

    def matches(self, element: dict | None) -> bool:
        points = (temporal_point(self.key.vr, str(value)) for value in _values(element))
        return any(point is not None and self.interval.contains(point) for point in points)

    def lookup(self) -> LookupPlan:
        cost = COST_OPEN_RANGE if self.open_ended else COST_RANGE
        return LookupPlan(self.key.keyword, (ValueRange("between", self.interval.low, self.interval.high),), cost)


@dataclass(frozen=True)
class IntegerMatch:
    """Single value matching of IS values, as numbers (``007`` matches 7)."""

    key: MatchingKey
    number: int

    def matches(self, element: dict | None) -> bool:
        for value in _values(element):
            try:
                if int(value) == self.number:
                    return True
            except (TypeError, ValueError):
                continue
        return False

    def lookup(self) -> LookupPlan:
        return LookupPlan(self.key.keyword, (ValueRange("exact", integer_key(self.number)),), COST_BROAD)


Constraint = UidList | TextMatch | NameMatch | TemporalMatch | IntegerMatch


# -- lookup entries of stored values -----------------------------------------------------------------


def index_entries(key: MatchingKey, element: dict | None) -> list[tuple[str, str]]:
    """The (lookup attribute, normalized value) pairs that let the lookup table find this element.

    One pair per value; a person name gives one per group and one per word (fuzzy matching).
    """
    entries: list[tuple[str, str]] = []
    for value in _values(element):
        if key.vr == "PN":
            for group in person_name_groups(value):
                entries.append((key.keyword, group))
                entries += [(words_attribute(key.keyword), word) for word in name_words(group)]
        elif key.vr in ("DA", "TM", "DT"):
            point = temporal_point(key.vr, str(value))
            if point is not None:
                entries.append((key.keyword, point))
        elif key.vr == "IS":
            try:
                entries.append((key.keyword, integer_key(parse_integer(str(value)))))
            except ValueError:
                continue
        elif text := str(value).strip():
            entries.append((key.keyword, text))
    return list(dict.fromkeys(entries))


def indexed_keys(level: Level) -> list[MatchingKey]:
    """The keys of ``level`` that have lookup entries (a study UID is the study entity's own key)."""
    return [key for key in KEYS if key.level == level and key.keyword != "StudyInstanceUID"]


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

    def __post_init__(self) -> None:
        for level in Level:
            self.by_level[level] = tuple(c for c in self.constraints if c.key.level == level)

    def wanted(self, level: Level) -> frozenset[int] | None:
        """The tags a match returns from ``level``'s entity; None means all it keeps (includefield=all)."""
        shown = level >= self._first_returned_level
        if self.include_all:
            return None if shown else frozenset()
        defaults = DEFAULT_RETURN[level] if shown else frozenset()
        if level == Level.INSTANCE:  # the instance keeps the whole data set: anything no other level keeps
            others = LEVEL_TAGS[Level.STUDY] | LEVEL_TAGS[Level.SERIES]
            return defaults | (self.returned - others) | (self.returned & LEVEL_TAGS[level])
        return defaults | (self.returned & LEVEL_TAGS[level])

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


def _matching_key(name: str, level: Level) -> MatchingKey:
    tag = _resolve_tag(name, "query parameter")
    key = _KEYS_BY_NAME.get(f"{tag:08X}")
    if key is None:
        supported = ", ".join(k.keyword for k in KEYS if k.level <= level)
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


def _constraint(key: MatchingKey, value: str, fuzzy: bool) -> Constraint | None:
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
    if key.vr == "PN":
        pattern = normalize_name(value).rstrip("^")
        if fuzzy and not name_words(pattern):
            return None
        return NameMatch(key, pattern, fuzzy)
    patterns = _split_list(value) if key.vr == "CS" else [value.strip()]
    if any(not pattern for pattern in patterns):
        raise InvalidQuery(f"{where}: a list has an empty item")
    return TextMatch(key, tuple(dict.fromkeys(patterns)))


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
) -> SearchQuery:
    """The search that a QIDO-RS query string asks for (PS3.18 8.3.4); ``study``/``series`` come from the URL."""
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
        key = _matching_key(name, level)
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
        constraint = _constraint(key, value, fuzzy)
        if constraint is not None:
            constraints.append(constraint)
    for uid, keyword in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID")):
        if uid is not None:
            constraints.append(UidList(_KEYS_BY_NAME[keyword], (uid,)))

    include_all = any(item.lower() == "all" for item in includes)
    for item in includes:
        if item.lower() != "all":
            tag = _resolve_tag(item, "includefield")
            if not keyword_for_tag(tag):
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
    )

"""The lookup table's two sides, normalized by the same functions (docs/index-design.md).

- Write side: ``index_entries`` gives the (attribute, normalized value) pairs a stored
  element gets in the lookup table; ``indexed_keys`` the matching keys that have entries.
- Read side: ``plan`` turns a matching constraint (dicom/constraints.py) into the ranges of
  normalized values to read and a rough cost, so a search starts from its cheapest
  constraint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dicom_core.dicom.constraints import (
    Constraint,
    IntegerMatch,
    NameMatch,
    NumberMatch,
    TemporalMatch,
    TextMatch,
    UidList,
    element_values,
)
from dicom_core.dicom.extended_tags import FLOAT_VRS, INDEXABLE_VRS, INTEGER_VRS, parse_number
from dicom_core.dicom.levels import KEYS, LEVEL_TAGS, Level, MatchingKey
from dicom_core.dicom.matching import (
    float_key,
    has_wildcard,
    integer_key,
    literal_prefix,
    name_words,
    parse_integer,
    person_name_groups,
    temporal_point,
    wildcard_match,
)

# How expensive a constraint is as the driver of a search (the lookup ranges it reads), lowest first.
COST_UID = 0
COST_EXACT = 1
COST_LONG_PREFIX = 2
COST_RANGE = 3
COST_BROAD = 4
COST_OPEN_RANGE = 5
COST_LEADING_WILDCARD = 9


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


def words_attribute(attribute: str) -> str:
    """The lookup attribute holding the words of a person-name key (fuzzy matching)."""
    return f"{attribute}.words"


def number_text(vr: str, number: float) -> str:
    """A number as the lookup table keys it: integers (IS, SL, SS, UL, US) exactly, others as doubles."""
    return float_key(number) if vr in FLOAT_VRS else integer_key(int(number))


# -- write side ---------------------------------------------------------------------------------------


def index_entries(key: MatchingKey, element: dict | None) -> list[tuple[str, str]]:
    """The (lookup attribute, normalized value) pairs that let the lookup table find this element.

    One pair per value; a person name gives one per group and one per word (fuzzy matching).
    """
    entries: list[tuple[str, str]] = []
    attribute = key.attribute
    for value in element_values(element):
        if key.vr == "PN":
            for group in person_name_groups(value):
                entries.append((attribute, group))
                entries += [(words_attribute(attribute), word) for word in name_words(group)]
        elif key.vr in ("DA", "TM", "DT"):
            point = temporal_point(key.vr, str(value))
            if point is not None:
                entries.append((attribute, point))
        elif key.vr == "IS":
            try:
                entries.append((attribute, integer_key(parse_integer(str(value)))))
            except ValueError:
                continue
        elif key.vr in FLOAT_VRS | INTEGER_VRS:
            try:
                entries.append((attribute, number_text(key.vr, parse_number(str(value)))))
            except ValueError:
                continue
        elif text := str(value).strip():
            entries.append((attribute, text))
    return list(dict.fromkeys(entries))


def indexed_keys(level: Level, attributes: dict) -> list[MatchingKey]:
    """The keys of ``level`` that have lookup entries in a record of ``attributes`` (its level JSON).

    The standard keys (a study UID is the study entity's own key), and the extended query
    tags whose values it holds: store and reindex put in a level's JSON, beyond the level's
    own attributes, exactly the values of extended query tags, each with its declared VR.
    """
    keys = [key for key in KEYS if key.level == level and key.keyword != "StudyInstanceUID"]
    for hex_tag, element in attributes.items():
        tag = int(hex_tag, 16)
        if tag not in LEVEL_TAGS[level] and element.get("vr") in INDEXABLE_VRS:
            keys.append(MatchingKey(hex_tag, tag, element["vr"], level, extended=True))
    return keys


# -- read side ----------------------------------------------------------------------------------------


def _pattern_range(pattern: str) -> tuple[ValueRange, int]:
    if not has_wildcard(pattern):
        return ValueRange("exact", pattern), COST_EXACT
    prefix = literal_prefix(pattern)
    return ValueRange("prefix", prefix), _prefix_cost(prefix)


def _prefix_cost(prefix: str) -> int:
    """Reading values by a literal prefix: the longer the prefix, the narrower the range."""
    return COST_LEADING_WILDCARD if not prefix else COST_LONG_PREFIX if len(prefix) >= 3 else COST_RANGE


def plan(constraint: Constraint) -> LookupPlan:
    """The lookup ranges that hold every candidate of ``constraint``, and what reading them costs."""
    keyword = constraint.key.attribute
    match constraint:
        case UidList():
            return LookupPlan(keyword, tuple(ValueRange("exact", uid) for uid in sorted(constraint.uids)), COST_UID)
        case TextMatch():
            planned = [_pattern_range(pattern) for pattern in constraint.patterns]
            cost = max(cost for _, cost in planned)
            if constraint.key.broad:
                cost = max(cost, COST_BROAD)
            ranges = tuple(sorted({value_range for value_range, _ in planned}, key=lambda value_range: value_range.low))
            return LookupPlan(keyword, ranges, cost, constraint.accepts)
        case NameMatch() if constraint.fuzzy:
            word = max(constraint.words, key=lambda word: len(literal_prefix(word)))
            prefix = literal_prefix(word)
            return LookupPlan(
                words_attribute(keyword),
                (ValueRange("prefix", prefix),),
                _prefix_cost(prefix),
                lambda value: wildcard_match(f"{word}*", value),
            )
        case NameMatch() if "=" in constraint.pattern:
            # Groups are indexed one by one: find the alphabetic group by the text before "=".
            prefix = literal_prefix(constraint.pattern).split("=")[0]
            cost = COST_LEADING_WILDCARD if not prefix else COST_LONG_PREFIX
            return LookupPlan(keyword, (ValueRange("prefix", prefix),), cost)
        case NameMatch():
            value_range, cost = _pattern_range(constraint.pattern)
            pattern = constraint.pattern
            return LookupPlan(keyword, (value_range,), cost, lambda value: wildcard_match(pattern, value))
        case TemporalMatch():
            cost = COST_OPEN_RANGE if constraint.open_ended else COST_RANGE
            return LookupPlan(keyword, (ValueRange("between", constraint.interval.low, constraint.interval.high),), cost)
        case IntegerMatch():
            return LookupPlan(keyword, (ValueRange("exact", integer_key(constraint.number)),), COST_BROAD)
        case NumberMatch():
            return _number_plan(keyword, constraint)
    raise TypeError(f"no lookup plan for {type(constraint).__name__}")


def _number_plan(attribute: str, constraint: NumberMatch) -> LookupPlan:
    """One value is an exact entry; a range runs between the keys of its ends (an open end: the extreme)."""
    vr = constraint.key.vr
    low, high = constraint.low, constraint.high
    if vr not in FLOAT_VRS:  # integers: the whole numbers within the range
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    if low is not None and low == high:
        return LookupPlan(attribute, (ValueRange("exact", number_text(vr, low)),), COST_EXACT)
    lowest = number_text(vr, low) if low is not None else number_text(vr, -math.inf if vr in FLOAT_VRS else -(10**12) + 1)
    highest = number_text(vr, high) if high is not None else number_text(vr, math.inf if vr in FLOAT_VRS else 10**12 - 1)
    open_ended = constraint.low is None or constraint.high is None
    return LookupPlan(attribute, (ValueRange("between", lowest, highest),), COST_OPEN_RANGE if open_ended else COST_RANGE)

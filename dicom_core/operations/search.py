"""QIDO-RS: search for studies, series and instances (PS3.18 10.6, matching per PS3.4 C.2.2.2).

A search is answered by point reads and key ranges only (docs/index-design.md):

1. ``parse_query`` turns the query string into constraints (dicom/query.py).
2. One constraint *drives* the search: the cheapest way in (storage/lookup_plan.py costs them). UIDs known from the URL or
   the query are point reads of the study, series or instance entity; any other key is
   a range of the lookup table (storage/lookup.py) that yields candidate UID paths.
   Without any constraint, the level's own table is read in key order.
3. Every candidate is *verified*: its entity (and, when needed, the entities above it,
   read once per request) must match every constraint. A stale lookup entry (deleted
   instance, changed attribute) fails this and is dropped, so deletes never touch the
   lookup table.
4. A match at a level above the one searched is expanded by key ranges: the series of a
   study, the instances of a series.

Results come in the order of the driving range: by the driving key's normalized value,
then by UIDs (docs/search.md, "Limits, order and paging"); paging reads ``offset + limit + 1`` matches and stops,
the extra one telling whether a ``Warning`` header is due.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword

from dicom_core.dicom.constraints import Constraint, UidList
from dicom_core.dicom.levels import (
    INSTANCE_AVAILABILITY,
    MODALITIES_IN_STUDY,
    NUMBER_OF_SERIES_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    NUMBER_OF_STUDY_RELATED_SERIES,
    RETRIEVE_URL,
    UID_KEYS,
    Level,
)
from dicom_core.dicom.query import InvalidQuery, SearchQuery, parse_query
from dicom_core.errors import BadRequest
from dicom_core.operations.extended_tags import searchable_tags
from dicom_core.operations.paging import page_of
from dicom_core.services import Services
from dicom_core.storage.index import Index
from dicom_core.storage.lookup import parse_row_key, partition_key
from dicom_core.storage.lookup_plan import COST_UID, LookupPlan, plan
from dicom_core.storage.records import InstanceRecord, LevelRecord, SeriesRecord, StudyRecord

_VERIFY_CONCURRENCY = 16  # candidates verified at once (point reads in flight)
_SYNTHESIZED = {RETRIEVE_URL, INSTANCE_AVAILABILITY}

Path = tuple[str, ...]


@dataclass(frozen=True)
class SearchRequest:
    partition: str
    level: Level
    parameters: list[tuple[str, str]]
    base_url: str  # the URL prefix of this partition's resources, e.g. http://host/v2
    study: str | None = None  # from the URL
    series: str | None = None


@dataclass
class SearchResult:
    matches: list[dict]
    warning: str | None = None  # the Warning header (PS3.18 8.3.4.4) when results were cut
    # Extended query tags of the query that some instance's value did not fit (Azure: erroneous-dicom-attributes).
    erroneous: tuple[str, ...] = ()


@dataclass
class _Row:
    """One match: its UID path and the attributes of each level read for it."""

    path: Path
    attributes: dict[Level, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class _Driver:
    """Where candidates come from: point reads of known UIDs, or one lookup plan; at ``level``."""

    level: Level
    cost: int
    paths: list[Path] | None = None
    lookup: LookupPlan | None = None

    def better_than(self, other: _Driver | None) -> bool:
        """Cheaper wins; at equal cost the deeper level wins, since it verifies fewer candidates per match."""
        if other is None:
            return True
        if self.cost != other.cost:
            return self.cost < other.cost
        return self.level > other.level


def _path(record: LevelRecord) -> Path:
    """The UID path (study, series, instance) of a record."""
    if isinstance(record, StudyRecord):
        return (record.study,)
    if isinstance(record, SeriesRecord):
        return (record.study, record.series)
    return (record.key.study, record.key.series, record.key.sop)


async def search(services: Services, request: SearchRequest) -> SearchResult:
    """Answer one QIDO-RS request; see the module docstring."""
    query, erroneous = await _parse(services, request)
    searcher = _Search(services.index, request.partition, query)
    page = await page_of(searcher.rows(), query.offset, query.limit, query.limit_capped)
    return SearchResult([searcher.render(row, request.base_url) for row in page.items], page.warning, erroneous)


async def _parse(services: Services, request: SearchRequest) -> tuple[SearchQuery, tuple[str, ...]]:
    """The query, and the extended query tags it names that have errors.

    The tag registry is read only when the standard keys do not answer the query: a key
    or an includefield they do not know (so searches on standard keys cost what they did).
    """
    maximum = services.settings.limits.max_search_results
    arguments = (request.parameters, request.level, request.study, request.series, maximum)
    try:
        query = parse_query(*arguments)
        if not _unkept(query):
            return query, ()
    except InvalidQuery:
        pass
    tags = await searchable_tags(services)
    try:
        query = parse_query(*arguments, keys=tags.keys)
    except InvalidQuery as error:
        unavailable = [reason for name, _ in request.parameters for reason in [tags.unavailable.get(_tag_name(name))] if reason]
        raise BadRequest(unavailable[0] if unavailable else str(error)) from None
    named = {f"{tag:08X}" for tag in query.returned} | {constraint.key.hex for constraint in query.constraints}
    return query, tuple(sorted(named & tags.with_errors))


def _unkept(query: SearchQuery) -> frozenset[int]:
    """The attributes the query returns that no level entity keeps: they come from an instance's whole data set."""
    kept = query.level_tags(Level.STUDY) | query.level_tags(Level.SERIES) | query.level_tags(Level.INSTANCE)
    return query.returned - kept - _SYNTHESIZED


def _tag_name(name: str) -> str:
    """A query parameter's tag as 8 hex digits, when it names one by tag or keyword."""
    tag = tag_for_keyword(name)
    return f"{tag:08X}" if tag is not None else name.upper()


def _own_uid(constraint: Constraint, level: Level) -> bool:
    """Whether ``constraint`` is a list of the level's own UIDs, which a candidate's key path answers."""
    return isinstance(constraint, UidList) and constraint.key.keyword == UID_KEYS[level]


def _known_uids(query: SearchQuery, level: Level) -> set[str] | None:
    """The UIDs a level is limited to by the URL and the query (their intersection), or None."""
    known: set[str] | None = None
    for constraint in query.by_level[level]:
        if _own_uid(constraint, level):
            known = set(constraint.uids) if known is None else known & set(constraint.uids)
    return known


class _Search:
    """One search: the driver, verification with a per-request cache of entities, rendering."""

    def __init__(self, index: Index, partition: str, query: SearchQuery) -> None:
        self.index = index
        self.partition = partition
        self.query = query
        self.known = {level: _known_uids(query, level) for level in Level}
        # The levels whose entity must be read: it is returned from, or matched beyond its UID.
        self.needed = {level: level <= query.level and self._returns_or_matches(level) for level in Level}
        self.with_metadata = query.include_all or bool(_unkept(query))
        self._cache: dict[tuple[Level, Path], asyncio.Future[dict | None]] = {}

    def _returns_or_matches(self, level: Level) -> bool:
        wanted = self.query.wanted(level)
        return wanted is None or bool(wanted) or any(not _own_uid(c, level) for c in self.query.by_level[level])

    # -- candidates ----------------------------------------------------------------------------

    def rows(self) -> AsyncIterator[_Row]:
        """Every match, in the documented order."""
        driver = self._point_driver()
        for constraint in self.query.constraints:
            if _own_uid(constraint, Level.STUDY):
                continue  # a study UID is a point read, considered above
            lookup = plan(constraint)
            candidate = _Driver(constraint.key.level, lookup.cost, lookup=lookup)
            if candidate.better_than(driver):  # ties keep the earlier: point reads, then the first constraint
                driver = candidate
        if driver is None:
            return self._scan()
        if driver.paths is not None:
            return self._verified(driver.level, self._from_paths(driver.paths), lookup=False)
        return self._verified(driver.level, self._from_lookup(driver.level, driver.lookup), lookup=True)

    def _point_driver(self) -> _Driver | None:
        """The deepest level whose UIDs are all known (with one known parent): point reads."""
        studies = self.known[Level.STUDY]
        if studies is None:
            return None
        paths: list[Path] = [(study,) for study in sorted(studies)]
        level = Level.STUDY
        for deeper in (Level.SERIES, Level.INSTANCE):
            uids = self.known[deeper]
            if uids is None or len(paths) != 1 or deeper > self.query.level:
                break
            paths = [(*paths[0], uid) for uid in sorted(uids)]
            level = deeper
        return _Driver(level, COST_UID, paths=paths)

    async def _from_paths(self, paths: list[Path]) -> AsyncIterator[tuple[Path, LevelRecord | None]]:
        for path in paths:
            yield path, None

    async def _from_lookup(self, level: Level, lookup: LookupPlan) -> AsyncIterator[tuple[Path, LevelRecord | None]]:
        """Candidate paths from the lookup ranges, filtered by their indexed value, each once."""
        pk = partition_key(self.partition, level, lookup.attribute)
        seen: set[Path] = set()
        page_size = self.query.offset + self.query.limit + 1
        for value_range in lookup.ranges:
            async for row_key in self.index.lookup.scan(pk, value_range, page_size):
                value, cut, path = parse_row_key(row_key)
                if path in seen or (lookup.accepts is not None and not cut and not lookup.accepts(value)):
                    continue
                seen.add(path)
                yield path, None

    async def _scan(self) -> AsyncIterator[_Row]:
        """No constraint: the level's own table, in key order, as far as the page needs."""
        level = self.query.level
        page_size = self.query.offset + self.query.limit + 1
        async for record in self.index.in_partition(level, self.partition, metadata=self.with_metadata, page_size=page_size):
            row = await self._row(level, _path(record), record)
            if row is not None:
                yield row

    # -- verification and expansion ------------------------------------------------------------------

    async def _verified(
        self, level: Level, candidates: AsyncIterator[tuple[Path, LevelRecord | None]], lookup: bool
    ) -> AsyncIterator[_Row]:
        """Verify candidates of ``level`` a few at a time (point reads in parallel), then expand each match."""
        chunk: list[Awaitable[_Row | None]] = []

        async def drain() -> AsyncIterator[_Row]:
            for row in await asyncio.gather(*chunk):
                if row is not None:
                    async for expanded in self._expand(row, level):
                        yield expanded
            chunk.clear()

        async for path, entity in candidates:
            chunk.append(self._row(level, path, entity, must_read=lookup))
            if len(chunk) >= _VERIFY_CONCURRENCY:
                async for row in drain():
                    yield row
        async for row in drain():
            yield row

    async def _row(self, level: Level, path: Path, record: LevelRecord | None, must_read: bool = False) -> _Row | None:
        """The candidate at ``path`` with the attributes of the levels needed, or None when it does not match."""
        if not self._uids_match(path):
            return None
        row = _Row(path)
        for at in Level:
            if at > level:
                break
            if at == level and record is not None:
                attributes = _attributes(record)
            elif self.needed[at] or (at == level and must_read):
                attributes = await self._read(at, path[: at + 1])
                if attributes is None:
                    return None
            else:
                continue
            if not self._matches(at, attributes):
                return None
            row.attributes[at] = attributes
        return row

    async def _expand(self, row: _Row, level: Level) -> AsyncIterator[_Row]:
        """The matches at the searched level below ``row`` (itself when it is at that level)."""
        if level == self.query.level:
            yield row
            return
        child = Level(level + 1)
        study = row.path[0]
        if child == Level.SERIES and not self.needed[Level.SERIES]:
            # Instances of a study straight from the study's partition: no series attribute is needed.
            child = Level.INSTANCE
            records = self.index.children(child, self.partition, study, metadata=self.with_metadata)
        elif child == Level.SERIES:
            records = self.index.children(child, self.partition, study)
        else:
            records = self.index.children(child, self.partition, study, row.path[1], metadata=self.with_metadata)
        async for record in records:
            path = _path(record)
            if not self._uids_match(path):
                continue
            attributes = _attributes(record)
            if not self._matches(child, attributes):
                continue
            found = _Row(path, {**row.attributes, child: attributes})
            async for expanded in self._expand(found, child):
                yield expanded

    def _uids_match(self, path: Path) -> bool:
        return all(self.known[level] is None or uid in self.known[level] for level, uid in zip(Level, path, strict=False))

    def _matches(self, level: Level, attributes: dict) -> bool:
        return all(
            constraint.matches(attributes.get(constraint.key.hex))
            for constraint in self.query.by_level[level]
            if not _own_uid(constraint, level)
        )

    async def _read(self, level: Level, path: Path) -> dict | None:
        """The attributes of one entity, read once per search (concurrent readers share the read)."""
        key = (level, path)
        if key not in self._cache:
            self._cache[key] = asyncio.ensure_future(self._read_entity(level, path))
        return await self._cache[key]

    async def _read_entity(self, level: Level, path: Path) -> dict | None:
        record = await self.index.read(level, self.partition, path, metadata=level == Level.INSTANCE and self.with_metadata)
        return None if record is None else _attributes(record)

    # -- results ------------------------------------------------------------------------------------------

    def render(self, row: _Row, base_url: str) -> dict:
        """The DICOM JSON of one match: defaults, matched keys and includefield, tags in order."""
        result: dict[str, dict] = {}
        for level, attributes in row.attributes.items():
            wanted = self.query.wanted(level)
            if wanted is None:
                result.update(attributes)
            else:
                result.update({tag: element for tag, element in attributes.items() if int(tag, 16) in wanted})
        level = self.query.level
        wanted = self.query.wanted(level)
        url = f"{base_url}/studies/{row.path[0]}"
        if level >= Level.SERIES:
            url += f"/series/{row.path[1]}"
        if level == Level.INSTANCE:
            url += f"/instances/{row.path[2]}"
        if wanted is None or RETRIEVE_URL in wanted:
            result[f"{RETRIEVE_URL:08X}"] = {"vr": "UR", "Value": [url]}
        if wanted is None or INSTANCE_AVAILABILITY in wanted:
            result[f"{INSTANCE_AVAILABILITY:08X}"] = {"vr": "CS", "Value": ["ONLINE"]}
        return dict(sorted(result.items()))


def _attributes(record: LevelRecord) -> dict:
    """A record's DICOM JSON, with what QIDO computes from its counts (PS3.18 10.6.3.3)."""
    attributes = dict(record.attributes)
    if isinstance(record, StudyRecord):
        if record.modalities:
            attributes[f"{MODALITIES_IN_STUDY:08X}"] = {"vr": "CS", "Value": record.modalities}
        attributes[f"{NUMBER_OF_STUDY_RELATED_SERIES:08X}"] = _count(record.series_count)
        attributes[f"{NUMBER_OF_STUDY_RELATED_INSTANCES:08X}"] = _count(record.instance_count)
    elif isinstance(record, SeriesRecord):
        attributes[f"{NUMBER_OF_SERIES_RELATED_INSTANCES:08X}"] = _count(record.instance_count)
    elif isinstance(record, InstanceRecord) and record.metadata_json:
        metadata = json.loads(record.metadata_json)
        attributes = {tag: element for tag, element in metadata.items() if "BulkDataURI" not in element} | attributes
    return attributes


def _count(number: int) -> dict:
    return {"vr": "IS", "Value": [number]}

"""Extended query tags (Azure DICOM v2 API, /v2/extendedquerytags; docs/extended-query-tags.md).

A tag is added as Adding, with a reindex operation (operations/tag_jobs.py) that indexes
the instances stored before it; once the reindex completes it is Ready and searchable
like a standard key. Stores index every Adding and Ready tag at once (operations/indexing.py),
so nothing stored during the reindex is missed. Deleting a tag makes it Deleting, which
no search and no store uses, and an operation removes its lookup entries and errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pydicom.datadict import tag_for_keyword

from dicom_core.dicom.extended_tags import MAX_TAGS, InvalidTagDeclaration, TagDeclaration, declaration
from dicom_core.dicom.levels import KEYS_BY_NAME, MatchingKey
from dicom_core.errors import BadRequest, Conflict, NotFound
from dicom_core.operations import jobs
from dicom_core.services import Services
from dicom_core.storage.extended_tags_store import TagChanged, TagExists
from dicom_core.storage.layout import InstanceKey
from dicom_core.storage.records import ExtendedQueryTagRecord, OperationRecord

ADDING, READY, DELETING = "Adding", "Ready", "Deleting"
ENABLED, DISABLED = "Enabled", "Disabled"
REINDEX = "reindex"  # the Azure DICOM v2 operation type
DELETE_TAG = "deleteExtendedQueryTag"
DEFAULT_PAGE, MAX_PAGE = 100, 200  # GET /v2/extendedquerytags limit (Azure: 1-200)
MAX_ERRORS_PAGE = 200
_LEVEL_NAMES = {0: "Study", 1: "Series", 2: "Instance"}


def tag_resource(path: str) -> str:
    return f"/extendedquerytags/{path}"


def _path_of(name: str) -> str:
    """The tag (8 hex digits) a URL names by tag or keyword; 400 otherwise."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise BadRequest(f"{name[:80]!r} is neither a tag (8 hexadecimal digits) nor a DICOM keyword")
    return f"{tag:08X}"


async def _existing(services: Services, name: str) -> ExtendedQueryTagRecord:
    path = _path_of(name)
    record = await services.extended_tags.get(path)
    if record is None:
        raise NotFound(f"extended query tag {path} is not stored")
    return record


# -- adding ---------------------------------------------------------------------------------------------


async def add_tags(services: Services, body: object) -> OperationRecord:
    """POST /v2/extendedquerytags: register the tags as Adding and start their reindex; 400/409 say why not."""
    if not isinstance(body, list) or not body:
        raise BadRequest('the body must be a non-empty JSON array of {"path", "vr", "privateCreator", "level"}')
    declarations: list[TagDeclaration] = []
    for position, item in enumerate(body):
        try:
            declared = declaration(item)
        except InvalidTagDeclaration as invalid:
            raise BadRequest(f"item {position}: {invalid}") from None
        if any(other.tag == declared.tag for other in declarations):
            raise BadRequest(f"item {position}: {declared.path} is given more than once")
        declarations.append(declared)
    existing = await services.extended_tags.all()
    for declared in declarations:
        if any(record.declaration.tag == declared.tag for record in existing):
            raise Conflict(f"extended query tag {declared.path} exists already")
    if len(existing) + len(declarations) > MAX_TAGS:
        raise BadRequest(f"at most {MAX_TAGS} extended query tags: {len(existing)} exist, {len(declarations)} more asked for")
    operation_id = jobs.new_id()
    try:
        await services.extended_tags.create(
            [ExtendedQueryTagRecord(declared, ADDING, ENABLED, operation_id) for declared in declarations]
        )
    except TagExists:
        raise Conflict("one of the extended query tags was added meanwhile; list them and try again") from None
    parameters = {"tags": [declared.path for declared in declarations]}
    return await jobs.start(
        services, REINDEX, parameters, tuple(tag_resource(declared.path) for declared in declarations), operation_id
    )


# -- reading ---------------------------------------------------------------------------------------------


async def tag_json(services: Services, record: ExtendedQueryTagRecord, base_url: str) -> dict:
    """One tag as the Azure DICOM v2 API shows it."""
    declared = record.declaration
    body: dict = {"path": declared.path, "vr": declared.vr}
    if declared.private_creator:
        body["privateCreator"] = declared.private_creator
    count = await services.extended_tags.count_errors(declared.path) if record.has_errors else 0
    body |= {
        "level": _LEVEL_NAMES[declared.level],
        "status": record.status,
        "queryStatus": record.query_status,
        "errors": {"count": count, "href": f"{base_url}{tag_resource(declared.path)}/errors"},
    }
    if record.status == ADDING and record.operation_id:
        body["operation"] = {"id": record.operation_id, "href": f"{base_url}/operations/{record.operation_id}"}
    return body


def page_bounds(limit: str | None, offset: str | None, maximum: int) -> tuple[int, int]:
    """``limit`` (1..maximum, default 100) and ``offset`` (0 or more) of a listing; 400 otherwise."""
    try:
        size = int(limit) if limit is not None else min(DEFAULT_PAGE, maximum)
        start = int(offset) if offset is not None else 0
    except ValueError:
        raise BadRequest("limit and offset must be integers") from None
    if not 1 <= size <= maximum:
        raise BadRequest(f"limit={size}: give 1 to {maximum}")
    if start < 0:
        raise BadRequest(f"offset={start}: give 0 or more")
    return size, start


async def list_tags(services: Services, limit: int, offset: int, base_url: str) -> list[dict]:
    records = (await services.extended_tags.all())[offset : offset + limit]
    return [await tag_json(services, record, base_url) for record in records]


async def get_tag(services: Services, name: str, base_url: str) -> dict:
    return await tag_json(services, await _existing(services, name), base_url)


async def tag_errors(services: Services, name: str, limit: int, offset: int) -> list[dict]:
    """GET /v2/extendedquerytags/{tag}/errors: the instances whose value does not fit the tag's VR."""
    record = await _existing(services, name)
    errors = await services.extended_tags.errors(record.declaration.path, offset, limit)
    return [
        {
            "tag": error.path,
            "studyInstanceUid": error.key.study,
            "seriesInstanceUid": error.key.series,
            "sopInstanceUid": error.key.sop,
            "createdTime": error.created.isoformat(),
            "errorMessage": error.message,
            "partitionName": error.key.partition,
        }
        for error in errors
    ]


# -- changing --------------------------------------------------------------------------------------------


async def update_tag(services: Services, name: str, body: object, base_url: str) -> dict:
    """PATCH /v2/extendedquerytags/{tag} with ``{"queryStatus": "Enabled" | "Disabled"}``."""
    if not isinstance(body, dict) or set(body) != {"queryStatus"} or body["queryStatus"] not in (ENABLED, DISABLED):
        raise BadRequest('the body must be {"queryStatus": "Enabled"} or {"queryStatus": "Disabled"}')
    record = await _existing(services, name)
    if record.status != READY:
        raise Conflict(f"extended query tag {record.declaration.path} is {record.status}; only a Ready tag can change")
    try:
        changed = await services.extended_tags.replace(replace(record, query_status=body["queryStatus"]))
    except TagChanged:
        raise Conflict(f"extended query tag {record.declaration.path} changed meanwhile; read it and try again") from None
    return await tag_json(services, changed, base_url)


async def delete_tag(services: Services, name: str) -> None:
    """DELETE /v2/extendedquerytags/{tag}: unknown to searches and stores at once, its entries removed in the background."""
    record = await _existing(services, name)
    if record.status == DELETING:
        raise Conflict(f"extended query tag {record.declaration.path} is being deleted already")
    operation_id = jobs.new_id()
    try:
        await services.extended_tags.replace(replace(record, status=DELETING, operation_id=operation_id))
    except TagChanged:
        raise Conflict(f"extended query tag {record.declaration.path} changed meanwhile; try again") from None
    path = record.declaration.path
    await jobs.start(services, DELETE_TAG, {"tag": path}, (tag_resource(path),), operation_id)


# -- what stores and searches use ------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchableTags:
    """The matching keys of the Ready, Enabled tags (by tag and keyword, with the standard ones), and why others are not."""

    keys: Mapping[str, MatchingKey]
    with_errors: frozenset[str]  # tags some instance's value did not fit
    unavailable: Mapping[str, str]  # tag -> why it cannot be searched now


async def searchable_tags(services: Services) -> SearchableTags:
    """The registry as searches see it: one query."""
    keys: dict[str, MatchingKey] = dict(KEYS_BY_NAME)
    with_errors: set[str] = set()
    unavailable: dict[str, str] = {}
    for record in await services.extended_tags.all():
        path = record.declaration.path
        if not record.searchable:
            state = "disabled" if record.query_status == DISABLED and record.status == READY else record.status.lower()
            unavailable[path] = f"extended query tag {path} is {state} and cannot be searched now"
            continue
        key = record.declaration.matching_key()
        keys[path] = key
        keys.setdefault(key.keyword, key)
        if record.has_errors:
            with_errors.add(path)
    return SearchableTags(keys, frozenset(with_errors), unavailable)


async def indexed_declarations(services: Services) -> list[TagDeclaration]:
    """The tags a store indexes: Adding (their reindex may have passed this instance already) and Ready."""
    return [record.declaration for record in await services.extended_tags.all() if record.status in (ADDING, READY)]


async def record_tag_errors(services: Services, key: InstanceKey, errors: list[tuple[str, str]]) -> None:
    """Record an instance's values that do not fit their tags' VRs (tag, problem), as errors of those tags."""
    if errors:
        await services.extended_tags.add_errors((path, key, message) for path, message in errors)

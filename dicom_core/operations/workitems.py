"""UPS-RS: create, retrieve, search, change the state of, update and cancel workitems (PS3.18 11, PS3.4 CC).

Each change is a read-modify-write of one workitem entity under its ETag (storage/workitems.py):
the rules of dicom/workitem.py decide on the version read, and when another writer changed the
workitem in between the decision is made again on the new version. So of 16 workers claiming one
workitem, one claim is written and the others are refused as if they had come later.

Refusals carry the status code of PS3.18 Tables 11.x.3-1 and the Warning text of Tables 11.x.3-2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from dicom_core.dicom.constraints import UidList
from dicom_core.dicom.query import DEFAULT_LIMIT, MAX_OFFSET, InvalidQuery, constraint_for
from dicom_core.dicom.uids import uid_problem
from dicom_core.dicom.workitem import (
    CANCEL_INFORMATION,
    CANCELLATION_DATE_TIME,
    DEFAULT_WORKLIST_LABEL,
    KEYS,
    KEYS_BY_NAME,
    MAX_WORKITEM_BYTES,
    PROCEDURE_STEP_STATE,
    SCHEDULED_MODIFICATION_DATE_TIME,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET,
    TRANSACTION_UID,
    UPS_PUSH_SOP_CLASS,
    WORKLIST_LABEL,
    Outcome,
    State,
    WorkitemProblem,
    cancel_progress,
    change_state,
    check_create,
    check_update,
    describe,
    element_at,
    parse_dataset,
    parse_state,
    request_cancel,
    text_element,
    text_value,
    with_progress,
)
from dicom_core.errors import BadRequest, Conflict, NotFound, PayloadTooLarge, StorageUnavailable
from dicom_core.operations.paging import WARNING_AGENT, page_of
from dicom_core.services import Services
from dicom_core.storage.lookup_plan import LookupPlan, plan
from dicom_core.storage.workitems import WorkitemRecord, WorkitemStore

_CONCURRENCY_RETRIES = 50
_VERIFY_CONCURRENCY = 16
_CONTROL_PARAMETERS = {"limit", "offset", "fuzzymatching", "includefield"}

# PS3.18 Tables 11.6.3-2, 11.7.3-2 and 11.8.3-2: the Warning texts.
ALREADY_CANCELED = "The UPS is already in the requested state of CANCELED."
ALREADY_COMPLETED_STATE = "The UPS is already in the requested state of COMPLETED."
TRANSACTION_UID_MISSING = "The Transaction UID is missing."
TRANSACTION_UID_INCORRECT = "The Transaction UID is incorrect."
INCONSISTENT_WITH_STATE = "The submitted request is inconsistent with the state of the UPS Instance."
NOT_A_CLAIMED_WORKITEM = "The target URI did not reference a claimed Workitem."
UPDATE_INCONSISTENT = "The submitted request is inconsistent with the current state of the Workitem."
ALREADY_COMPLETED = "The UPS is already COMPLETED."


def warning(text: str) -> str:
    """A Warning header value as PS3.18 11 spells it: ``299 <service>: <text>``."""
    return f"299 {WARNING_AGENT}: {text}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S.%f")


def _problem(error: WorkitemProblem) -> BadRequest:
    return BadRequest(str(error))


def _check_size(dataset: dict) -> None:
    size = len(json.dumps(dataset, separators=(",", ":")).encode())
    if size > MAX_WORKITEM_BYTES:
        raise PayloadTooLarge(f"the workitem would be {size} bytes of DICOM JSON, more than the maximum {MAX_WORKITEM_BYTES}")


# -- create and retrieve (PS3.18 11.4, 11.5) -------------------------------------------------------------------


async def create_workitem(services: Services, partition: str, uid: str | None, body: bytes) -> str:
    """Create a SCHEDULED workitem (N-CREATE, PS3.4 CC.2.5); its UID. 400 naming every problem, 409 when it exists."""
    try:
        dataset = parse_dataset(body)
        uid = check_create(dataset, uid)
    except WorkitemProblem as error:
        raise _problem(error) from None
    # The lock is kept beside the dataset, never in it, so no answer can show it (PS3.4 CC.2.7.3).
    dataset = {tag: element for tag, element in dataset.items() if tag != TRANSACTION_UID} | {
        SOP_CLASS_UID: text_element("UI", UPS_PUSH_SOP_CLASS),
        SOP_INSTANCE_UID: text_element("UI", uid),
        SCHEDULED_MODIFICATION_DATE_TIME: text_element("DT", _now()),
        WORKLIST_LABEL: text_element("LO", text_value(dataset, WORKLIST_LABEL) or DEFAULT_WORKLIST_LABEL),
    }
    _check_size(dataset)
    record = WorkitemRecord(partition, uid, State.SCHEDULED, None, dict(sorted(dataset.items())))
    if not await services.workitems.create(record):
        raise Conflict(f"workitem {uid} already exists (PS3.18 11.4.3.1)")
    return uid


async def retrieve_workitem(services: Services, partition: str, uid: str) -> dict:
    """The workitem's dataset (N-GET, PS3.4 CC.2.7). The Transaction UID is never part of it: only its owner knows it."""
    return (await _existing(services.workitems, partition, uid)).dataset


async def _existing(store: WorkitemStore, partition: str, uid: str) -> WorkitemRecord:
    record = await store.get(partition, uid)
    if record is None:
        raise NotFound(f"workitem {uid} was not found")
    return record


# -- changes: one read-modify-write loop ------------------------------------------------------------------------

Decision = tuple[WorkitemRecord | None, str | None]  # the new version (None: nothing to write) and a Warning


async def _change(store: WorkitemStore, partition: str, uid: str, decide: Callable[[WorkitemRecord], Decision]) -> str | None:
    """Apply ``decide`` to the current version until the write wins (ETag) or ``decide`` refuses; the Warning, if any."""
    for _ in range(_CONCURRENCY_RETRIES):
        current = await _existing(store, partition, uid)
        new, warning_text = decide(current)
        if new is None or await store.replace(current, new):
            return warning_text
    raise StorageUnavailable(
        f"workitem {uid} changed {_CONCURRENCY_RETRIES} times while this request tried to change it; try again"
    )


def _with_state(record: WorkitemRecord, state: State, transaction_uid: str | None, dataset: dict) -> WorkitemRecord:
    """``record`` in ``state``: the entity's State column and the dataset's ProcedureStepState always agree."""
    dataset = dataset | {PROCEDURE_STEP_STATE: text_element("CS", state.value)}
    return replace(record, state=state, transaction_uid=transaction_uid, dataset=dataset)


# -- change state (PS3.18 11.7, PS3.4 CC.2.1) -----------------------------------------------------------------------


@dataclass(frozen=True)
class StateChange:
    """The Change UPS State action information (PS3.4 Table CC.2.1-1)."""

    state: State
    transaction_uid: str


def parse_state_change(body: bytes) -> StateChange:
    """The requested state and Transaction UID; 400 naming what is missing or wrong (with the Warning of 11.7.3.2)."""
    try:
        dataset = parse_dataset(body)
    except WorkitemProblem as error:
        raise _problem(error) from None
    others = [describe(tag) for tag in dataset if tag not in (PROCEDURE_STEP_STATE, TRANSACTION_UID, SPECIFIC_CHARACTER_SET)]
    if others:
        raise BadRequest(
            f"a state change holds only ProcedureStepState and TransactionUID (PS3.4 Table CC.2.1-1), not {', '.join(others)}"
        )
    if text_value(dataset, PROCEDURE_STEP_STATE) is None:
        raise BadRequest("ProcedureStepState (00741000) is missing: give IN PROGRESS, COMPLETED or CANCELED")
    try:
        state = parse_state(text_value(dataset, PROCEDURE_STEP_STATE), "ProcedureStepState")
    except WorkitemProblem as error:
        raise _problem(error) from None
    transaction_uid = text_value(dataset, TRANSACTION_UID)
    if not transaction_uid:
        raise BadRequest(
            "TransactionUID (00081195) is missing: a worker makes one up to claim a workitem and sends it with every change",
            {"Warning": warning(TRANSACTION_UID_MISSING)},
        )
    if problem := uid_problem(transaction_uid):
        raise BadRequest(
            f"TransactionUID {transaction_uid[:80]!r} is not a valid UID: {problem}",
            {"Warning": warning(TRANSACTION_UID_INCORRECT)},
        )
    return StateChange(state, transaction_uid)


def _refusal(outcome: Outcome, record: WorkitemRecord, requested: str) -> BadRequest | Conflict:
    """The HTTP refusal of a refused DIMSE status (PS3.4 Tables CC.2.1-2, CC.2.2-2; PS3.18 Tables 11.7.3-1, 11.8.3-1)."""
    where = f"workitem {record.uid} is {record.state.value}"
    if outcome.code == "C301":
        return BadRequest(
            f"{where} and was claimed with another Transaction UID; only its owner may change it (PS3.4 CC.2.1.3, C301)",
            {"Warning": warning(TRANSACTION_UID_INCORRECT)},
        )
    if outcome.code == "C303":
        return BadRequest(
            "a workitem is SCHEDULED only when it is created; request IN PROGRESS, COMPLETED or CANCELED (PS3.4 CC.1.1, C303)",
            {"Warning": warning(INCONSISTENT_WITH_STATE)},
        )
    if outcome.code == "C311":
        return Conflict(
            f"{where}: it cannot be canceled any more (PS3.4 Table CC.2.2-2, C311)", {"Warning": warning(ALREADY_COMPLETED)}
        )
    why = {
        "C300": "a COMPLETED or CANCELED workitem may no longer change",
        "C302": "it is already IN PROGRESS with this Transaction UID",
        "C310": "it must be claimed (IN PROGRESS) first",
    }[outcome.code]
    return Conflict(
        f"{where}; {requested} is refused: {why} (PS3.4 Table CC.1.1-2, {outcome.code})",
        {"Warning": warning(INCONSISTENT_WITH_STATE)},
    )


async def change_workitem_state(services: Services, partition: str, uid: str, body: bytes) -> str | None:
    """Claim, complete or cancel a workitem (PS3.4 CC.2.1.3); the Warning of a request that changed nothing."""
    request = parse_state_change(body)

    def decide(current: WorkitemRecord) -> Decision:
        outcome = change_state(current.state, current.transaction_uid, request.state, request.transaction_uid)
        if outcome.refused:
            raise _refusal(outcome, current, request.state.value)
        if outcome.state is None:  # B304, B306: already in the requested final state
            return None, warning(ALREADY_CANCELED if request.state == State.CANCELED else ALREADY_COMPLETED_STATE)
        dataset = current.dataset
        if outcome.state == State.CANCELED:
            dataset = with_progress(dataset, {CANCELLATION_DATE_TIME: text_element("DT", _now())})
        return _with_state(current, outcome.state, request.transaction_uid, dataset), None

    return await _change(services.workitems, partition, uid, decide)


# -- update (PS3.18 11.6, PS3.4 CC.2.6) -------------------------------------------------------------------------------


async def update_workitem(services: Services, partition: str, uid: str, transaction_uid: str | None, body: bytes) -> None:
    """Set attributes of a workitem (N-SET): SCHEDULED ones without a Transaction UID, IN PROGRESS ones by their owner."""
    try:
        changes = parse_dataset(body)
    except WorkitemProblem as error:
        raise _problem(error) from None

    def decide(current: WorkitemRecord) -> Decision:
        where = f"workitem {uid} is {current.state.value}"
        if current.state.final:
            raise BadRequest(f"{where}: it may no longer be updated (PS3.4 CC.2.6.3)", {"Warning": warning(UPDATE_INCONSISTENT)})
        if current.state == State.SCHEDULED and transaction_uid is not None:
            raise BadRequest(
                f"{where} and unclaimed: update it without a Transaction UID (PS3.4 CC.2.6.3)",
                {"Warning": warning(NOT_A_CLAIMED_WORKITEM)},
            )
        if current.state == State.IN_PROGRESS and transaction_uid != current.transaction_uid:
            said = "no Transaction UID was given" if transaction_uid is None else "the Transaction UID is not its owner's"
            raise BadRequest(
                f"{where}: {said}; its owner updates it with POST /workitems/{uid}?{{transaction-uid}} (PS3.4 CC.2.6.3)",
                {"Warning": warning(NOT_A_CLAIMED_WORKITEM)},
            )
        merged = current.dataset | changes | {SCHEDULED_MODIFICATION_DATE_TIME: text_element("DT", _now())}
        try:
            check_update(changes, merged)
        except WorkitemProblem as error:
            raise _problem(error) from None
        _check_size(merged)
        return replace(current, dataset=dict(sorted(merged.items()))), None

    await _change(services.workitems, partition, uid, decide)


# -- request cancellation (PS3.18 11.8, PS3.4 CC.2.2) ---------------------------------------------------------------


async def request_cancellation(services: Services, partition: str, uid: str, body: bytes) -> str | None:
    """Cancel a SCHEDULED workitem, or record the request on an IN PROGRESS one for its owner; the Warning, if any."""
    try:
        information = parse_dataset(body, required=False)
    except WorkitemProblem as error:
        raise _problem(error) from None
    others = [describe(tag) for tag in information if tag not in CANCEL_INFORMATION and tag != SPECIFIC_CHARACTER_SET]
    if others:
        allowed = ", ".join(CANCEL_INFORMATION.values())
        raise BadRequest(f"a cancel request may hold {allowed} (PS3.4 Table CC.2.2-1), not {', '.join(others)}")
    recorded = cancel_progress({tag: element for tag, element in information.items() if tag in CANCEL_INFORMATION})

    def decide(current: WorkitemRecord) -> Decision:
        outcome = request_cancel(current.state)
        if outcome.refused:
            raise _refusal(outcome, current, "a cancel request")
        if outcome.code == "B304":
            return None, warning(ALREADY_CANCELED)
        if outcome.state == State.CANCELED:
            dataset = with_progress(current.dataset, recorded | {CANCELLATION_DATE_TIME: text_element("DT", _now())})
            return _with_state(current, State.CANCELED, None, dataset), None
        return replace(current, dataset=with_progress(current.dataset, recorded)), None

    return await _change(services.workitems, partition, uid, decide)


# -- search (PS3.18 11.9, matching per PS3.4 C.2.2.2 and CC.2.5-3) -------------------------------------------------


@dataclass
class WorkitemSearchResult:
    matches: list[dict]
    warning: str | None = None  # when more results than the page exist (PS3.18 8.3.4.4)


@dataclass(frozen=True)
class _Query:
    constraints: tuple
    limit: int
    offset: int
    capped: bool


def _parse_search(parameters: Sequence[tuple[str, str]], max_limit: int) -> _Query:
    controls: dict[str, str] = {}
    keyed = []
    for name, value in parameters:
        lowered = name.lower()
        if lowered == "includefield":
            continue  # every match is returned whole (docs/workitems.md)
        if lowered in _CONTROL_PARAMETERS:
            if lowered in controls:
                raise BadRequest(f"query parameter {name!r} is given more than once")
            controls[lowered] = value
            continue
        key = KEYS_BY_NAME.get(name) or KEYS_BY_NAME.get(name.upper())  # tags in either case
        if key is None:
            supported = ", ".join(key.keyword for key in KEYS)
            raise BadRequest(f"{name[:80]!r} is not a supported workitem matching key; supported: {supported}")
        if any(seen.keyword == key.keyword for seen, _ in keyed):
            raise BadRequest(f"matching key {key.keyword} is given more than once")
        keyed.append((key, value))
    fuzzy = controls.get("fuzzymatching", "false").strip().lower()
    if fuzzy not in ("true", "false"):
        raise BadRequest(f"fuzzymatching={controls['fuzzymatching'][:40]!r}: use true or false")
    limit = _count(controls, "limit", DEFAULT_LIMIT, None)
    if limit == 0:
        raise BadRequest("limit=0: ask for at least one result")
    offset = _count(controls, "offset", 0, MAX_OFFSET)
    try:
        constraints = tuple(c for key, value in keyed if (c := constraint_for(key, value, fuzzy == "true")) is not None)
    except InvalidQuery as error:
        raise BadRequest(str(error)) from None
    return _Query(constraints, min(limit, max_limit), offset, limit > max_limit)


def _count(controls: dict[str, str], name: str, default: int, maximum: int | None) -> int:
    if name not in controls:
        return default
    text = controls[name].strip()
    if not text.isdigit():
        raise BadRequest(f"{name}={text[:40]!r} is not a non-negative integer")
    if maximum is not None and int(text) > maximum:
        raise BadRequest(f"{name}={text} is larger than the maximum {maximum}")
    return int(text)


async def search_workitems(services: Services, partition: str, parameters: Sequence[tuple[str, str]]) -> WorkitemSearchResult:
    """Workitems matching the query, by key lookups only: the cheapest key drives, every candidate is verified."""
    query = _parse_search(parameters, services.settings.limits.max_search_results)
    matches = _matches(services.workitems, partition, query, query.offset + query.limit + 1)
    page = await page_of(matches, query.offset, query.limit, query.capped)
    return WorkitemSearchResult([record.dataset for record in page.items], page.warning)


async def _matches(store: WorkitemStore, partition: str, query: _Query, page_size: int) -> AsyncIterator[WorkitemRecord]:
    """Matches in the order of the driving key: SOP Instance UIDs as point reads, another key as lookup ranges."""
    uids = [c for c in query.constraints if isinstance(c, UidList) and c.key.keyword == "SOPInstanceUID"]
    plans = [plan(c) for c in query.constraints]
    if uids:
        candidates: AsyncIterator[str] | None = _listed(sorted(uids[0].uids))
    elif plans:
        candidates = _looked_up(store, partition, min(plans, key=lambda candidate: candidate.cost), page_size)
    else:
        candidates = None
    if candidates is None:  # no constraint: the partition's workitems in UID order, as far as the page needs
        async for record in store.in_partition(partition, page_size):
            yield record
        return
    chunk: list[str] = []
    async for uid in candidates:
        chunk.append(uid)
        if len(chunk) >= _VERIFY_CONCURRENCY:
            for record in await _verified(store, partition, chunk, query):
                yield record
            chunk = []
    for record in await _verified(store, partition, chunk, query):
        yield record


async def _listed(uids: list[str]) -> AsyncIterator[str]:
    for uid in uids:
        yield uid


async def _looked_up(store: WorkitemStore, partition: str, lookup: LookupPlan, page_size: int) -> AsyncIterator[str]:
    seen: set[str] = set()
    for value_range in lookup.ranges:
        async for candidate in store.candidates(partition, lookup.attribute, value_range, page_size):
            rejected = lookup.accepts is not None and not candidate.cut and not lookup.accepts(candidate.value)
            if candidate.uid in seen or rejected:
                continue
            seen.add(candidate.uid)
            yield candidate.uid


async def _verified(store: WorkitemStore, partition: str, uids: list[str], query: _Query) -> list[WorkitemRecord]:
    """The candidates (read at once) that exist and match every constraint; stale lookup entries drop out here."""
    records = await asyncio.gather(*(store.get(partition, uid) for uid in uids))
    return [
        record
        for record in records
        if record is not None and all(c.matches(element_at(record.dataset, c.key)) for c in query.constraints)
    ]

"""Unified Procedure Step workitems (PS3.4 Annex CC, PS3.18 11): pure rules, no storage, no HTTP.

- ``parse_dataset``: the one DICOM JSON dataset of a request body (PS3.18 F.2), shape checked;
- ``check_create``: the N-CREATE requirements of PS3.4 Table CC.2.5-3 as this service enforces
  them (``CREATE_REQUIREMENTS``), each problem named;
- ``check_update``: what an N-SET may not change (Table CC.2.5-3, N-SET column; CC.2.6.3);
- ``change_state`` and ``request_cancel``: the state machine of PS3.4 CC.1.1 (Table CC.1.1-2)
  with the status codes of Tables CC.2.1-2 and CC.2.2-2;
- ``KEYS``: the UPS matching keys (Table CC.2.5-3, "Matching Key Type")
  and the normalized values the lookup table keys on, from the same functions QIDO uses.

Problems raise ``WorkitemProblem`` with a message written for the client.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

from pydicom.datadict import keyword_for_tag

from dicom_core.dicom.matching import temporal_point
from dicom_core.dicom.uids import uid_problem

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # every UPS is an instance of the Push SOP Class (PS3.4 CC.3.1)
MAX_WORKITEM_BYTES = 256 * 1024  # a request body, and a workitem once updated
MAX_INDEXED_ITEMS = 100  # items of a sequence whose values are matching keys
MAX_NESTING = 16  # levels of sequences in a workitem

SPECIFIC_CHARACTER_SET = "00080005"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
TRANSACTION_UID = "00081195"
PROCEDURE_STEP_STATE = "00741000"
PROGRESS_INFORMATION_SEQUENCE = "00741002"
SCHEDULED_MODIFICATION_DATE_TIME = "00404010"
WORKLIST_LABEL = "00741202"
CANCELLATION_DATE_TIME = "00404052"
REASON_FOR_CANCELLATION = "00741238"
CONTACT_URI = "0074100A"
CONTACT_DISPLAY_NAME = "0074100C"
COMMUNICATIONS_URI_SEQUENCE = "00741008"
# The Request UPS Cancel action information (PS3.4 Table CC.2.2-1) the service records.
CANCEL_INFORMATION = {
    REASON_FOR_CANCELLATION: "ReasonForCancellation",
    "0074100E": "ProcedureStepDiscontinuationReasonCodeSequence",
    CONTACT_URI: "ContactURI",
    CONTACT_DISPLAY_NAME: "ContactDisplayName",
}


class WorkitemProblem(ValueError):
    """A workitem request the service refuses; the message says what was wrong."""


class State(StrEnum):
    """Procedure Step State (0074,1000), PS3.4 Table CC.1.1-1."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        return self in (State.COMPLETED, State.CANCELED)


# -- DICOM JSON --------------------------------------------------------------------------------------------


def parse_dataset(body: bytes, *, required: bool = True) -> dict:
    """The DICOM JSON dataset of a request body: one object, or an array holding exactly one (PS3.18 F.2)."""
    if not body.strip():
        if required:
            raise WorkitemProblem("the request has no body: send one DICOM JSON dataset (application/dicom+json)")
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise WorkitemProblem(f"the body is not JSON: {error}") from None
    except RecursionError:
        raise WorkitemProblem(f"the body nests deeper than the {MAX_NESTING} sequence levels a workitem may have") from None
    if isinstance(document, list):
        if len(document) != 1:
            raise WorkitemProblem(f"the body holds {len(document)} datasets; send exactly one")
        document = document[0]
    if not isinstance(document, dict):
        raise WorkitemProblem("the body is not a DICOM JSON dataset (an object of tags)")
    _check_shape(document, "", 0)
    return document


def _check_shape(dataset: dict, where: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise WorkitemProblem(f"{where}: sequences nest deeper than {MAX_NESTING} levels")
    for tag, element in dataset.items():
        name = f"{where}{tag}"
        if len(tag) != 8 or any(character not in "0123456789ABCDEFabcdef" for character in tag):
            raise WorkitemProblem(f"{name[:80]!r} is not a tag: use 8 hexadecimal digits (PS3.18 F.2.1.1)")
        if not isinstance(element, dict) or not isinstance(element.get("vr"), str):
            raise WorkitemProblem(f'{describe(tag)} at {name}: an element is an object with a "vr" (PS3.18 F.2.2)')
        values = element.get("Value")
        if values is None:
            continue
        if not isinstance(values, list):
            raise WorkitemProblem(f'{describe(tag)} at {name}: "Value" must be an array (PS3.18 F.2.4)')
        if element["vr"] == "SQ":
            for position, item in enumerate(values):
                if not isinstance(item, dict):
                    raise WorkitemProblem(f"{describe(tag)} item {position}: a sequence item is a dataset (an object)")
                _check_shape(item, f"{name}/{position}/", depth + 1)


def describe(tag: str) -> str:
    """``Keyword (GGGGEEEE)`` for messages."""
    keyword = keyword_for_tag(int(tag, 16))
    return f"{keyword} ({tag.upper()})" if keyword else tag.upper()


def first_value(dataset: dict, tag: str) -> object | None:
    values = (dataset.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def text_value(dataset: dict, tag: str) -> str | None:
    value = first_value(dataset, tag)
    return None if value is None else str(value).strip()


def text_element(vr: str, value: str) -> dict:
    return {"vr": vr, "Value": [value]}


# -- N-CREATE requirements (PS3.4 Table CC.2.5-3, "Req. Type N-CREATE (SCU/SCP)") -------------------------------


@dataclass(frozen=True)
class Requirement:
    """One attribute of Table CC.2.5-3: its N-CREATE type for the SCU and, for coded strings, the allowed values."""

    tag: str
    vr: str
    type: str  # "1": present with a value; "2": present, may be empty; "E": absent or empty (nothing set yet)
    allowed: tuple[str, ...] = ()


CREATE_REQUIREMENTS: tuple[Requirement, ...] = (
    # Unified Procedure Step Scheduled Procedure Information Module
    Requirement("00741200", "CS", "1", ("HIGH", "MEDIUM", "LOW")),  # Scheduled Procedure Step Priority
    Requirement("00741204", "LO", "1"),  # Procedure Step Label
    Requirement(WORKLIST_LABEL, "LO", "2"),  # Worklist Label (2/1: the service fills in DEFAULT_WORKLIST_LABEL)
    Requirement("00404025", "SQ", "2"),  # Scheduled Station Name Code Sequence
    Requirement("00404026", "SQ", "2"),  # Scheduled Station Class Code Sequence
    Requirement("00404027", "SQ", "2"),  # Scheduled Station Geographic Location Code Sequence
    Requirement("00404005", "DT", "1"),  # Scheduled Procedure Step Start DateTime
    Requirement("00404018", "SQ", "2"),  # Scheduled Workitem Code Sequence
    Requirement("00404041", "CS", "1", ("READY", "UNAVAILABLE", "INCOMPLETE")),  # Input Readiness State
    Requirement("00404021", "SQ", "2"),  # Input Information Sequence
    Requirement("00741210", "SQ", "2"),  # Scheduled Processing Parameters Sequence
    Requirement("00400400", "LT", "2"),  # Comments on the Scheduled Procedure Step
    # Unified Procedure Step Relationship Module
    Requirement("00100010", "PN", "2"),  # Patient's Name
    Requirement("00100020", "LO", "2"),  # Patient ID (1C/2: type 2 here)
    Requirement("00101002", "SQ", "2"),  # Other Patient IDs Sequence
    Requirement("00100030", "DA", "2"),  # Patient's Birth Date
    Requirement("00100040", "CS", "2"),  # Patient's Sex
    Requirement("00380010", "LO", "2"),  # Admission ID
    Requirement("00380014", "SQ", "2"),  # Issuer of Admission ID Sequence
    Requirement("00081080", "LO", "2"),  # Admitting Diagnoses Description
    Requirement("00081084", "SQ", "2"),  # Admitting Diagnoses Code Sequence
    Requirement("0040A370", "SQ", "2"),  # Referenced Request Sequence
    # Progress and Performed Procedure Information Modules: created SCHEDULED (CC.1.1), unowned, nothing done yet.
    Requirement(PROCEDURE_STEP_STATE, "CS", "1", (State.SCHEDULED.value,)),
    Requirement(TRANSACTION_UID, "UI", "E"),
    Requirement(PROGRESS_INFORMATION_SEQUENCE, "SQ", "E"),
    Requirement("00741216", "SQ", "E"),  # Unified Procedure Step Performed Procedure Sequence
)
_RELATIONSHIP = "the Unified Procedure Step Relationship Module is set at creation only"
# Attributes an N-SET may not touch (Table CC.2.5-3, N-SET column "Not allowed"; CC.2.6.3): the identity of
# the instance, its state and its lock (changed only by Change State, PS3.4 CC.2.1), and whom it is for.
NOT_UPDATABLE = {
    SOP_CLASS_UID: "the SOP Class of a workitem is fixed",
    SOP_INSTANCE_UID: "the Workitem UID is fixed",
    PROCEDURE_STEP_STATE: "change the state with PUT /workitems/{workitem}/state (PS3.18 11.7)",
    TRANSACTION_UID: "the Transaction UID goes in the query string (PS3.18 11.6.1), never in the dataset",
    **dict.fromkeys(
        ("00100010", "00100020", "00100030", "00100040", "00380010", "00380014", "00081080", "00081084", "0040A370", "00741224"),
        _RELATIONSHIP,
    ),
}
DEFAULT_WORKLIST_LABEL = "DEFAULT"  # WorklistLabel is 2/1: when the SCU leaves it empty, the SCP fills it in


def check_create(dataset: dict, uid: str | None) -> str:
    """The Workitem UID; WorkitemProblem naming every attribute that breaks the N-CREATE requirements.

    The UID comes from the URL (PS3.18 11.4.1.1) or, as the Azure DICOM service accepts, from SOP
    Instance UID in the dataset; when both are given they must agree.
    """
    problems = []
    in_dataset = text_value(dataset, SOP_INSTANCE_UID)
    if uid is None and in_dataset is None:
        problems.append("no Workitem UID: give it in the URL (?{uid} or ?AffectedSOPInstanceUID={uid}) or as SOPInstanceUID")
    elif uid is not None and in_dataset is not None and uid != in_dataset:
        problems.append(f"SOPInstanceUID (00080018) {in_dataset[:64]!r} differs from the Workitem UID {uid!r} of the URL")
    uid = uid or in_dataset
    if uid is not None and (problem := uid_problem(uid)):
        problems.append(f"the Workitem UID {uid[:80]!r} is not a valid UID: {problem}")
    sop_class = text_value(dataset, SOP_CLASS_UID)
    if sop_class is not None and sop_class != UPS_PUSH_SOP_CLASS:
        problems.append(f"SOPClassUID (00080016) must be the UPS Push SOP Class {UPS_PUSH_SOP_CLASS} (PS3.4 CC.3.1)")
    for requirement in CREATE_REQUIREMENTS:
        problems += _requirement_problems(dataset, requirement)
    problems += _index_problems(dataset)
    if problems:
        raise WorkitemProblem("the workitem does not meet PS3.4 Table CC.2.5-3 (N-CREATE): " + "; ".join(problems))
    assert uid is not None
    return uid


def _requirement_problems(dataset: dict, requirement: Requirement) -> list[str]:
    name = describe(requirement.tag)
    element = dataset.get(requirement.tag)
    if requirement.type == "E":
        return [f"{name} must be empty when a workitem is created"] if element and element.get("Value") else []
    if element is None:
        return [f"{name} is missing (type {requirement.type})"]
    if element["vr"] != requirement.vr:
        return [f"{name} has VR {element['vr'][:4]!r}, not {requirement.vr}"]
    values = element.get("Value") or []
    if not values:
        return [f"{name} is empty (type 1: it needs a value)"] if requirement.type == "1" else []
    if requirement.vr == "SQ":
        return []
    value = str(values[0]).strip() if not isinstance(values[0], dict) else ""
    if requirement.allowed and value not in requirement.allowed:
        return [f"{name} is {value[:40]!r}; allowed: {', '.join(requirement.allowed)}"]
    if requirement.vr in ("DT", "DA") and not _temporal(requirement.vr, value):
        return [f"{name} {value[:40]!r} is not a valid {requirement.vr} value"]
    return []


def _temporal(vr: str, value: str) -> bool:
    """A valid DA, or DT with at most a UTC offset ``&ZZXX`` after it (PS3.5 Table 6.2-1)."""
    offset = re.fullmatch(r"(.*?)([+-]\d{4})?", value)
    return offset is not None and ("-" not in offset.group(1)) and temporal_point(vr, offset.group(1)) is not None


def _index_problems(dataset: dict) -> list[str]:
    problems = []
    for key in KEYS:
        if len(key.path) > 1 and len((dataset.get(key.path[0]) or {}).get("Value") or []) > MAX_INDEXED_ITEMS:
            problems.append(f"{describe(key.path[0])} has more than {MAX_INDEXED_ITEMS} items")
    return list(dict.fromkeys(problems))


def check_update(changes: dict, merged: dict) -> None:
    """WorkitemProblem naming each attribute an N-SET may not change or leaves invalid (PS3.4 CC.2.6)."""
    problems = [f"{describe(tag)} cannot be updated: {why}" for tag, why in NOT_UPDATABLE.items() if tag in changes]
    for requirement in CREATE_REQUIREMENTS:
        # What a new workitem must leave empty is what its owner fills in later.
        if requirement.tag in changes and requirement.tag not in NOT_UPDATABLE and requirement.type != "E":
            problems += _requirement_problems(merged, requirement)
    problems += _index_problems(merged)
    if problems:
        raise WorkitemProblem("the update is refused (PS3.4 Table CC.2.5-3, N-SET): " + "; ".join(problems))


# -- the state machine (PS3.4 CC.1.1, Table CC.1.1-2) ------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The answer of the state machine: the new state (None: unchanged) and the DIMSE status (Tables CC.2.1-2, CC.2.2-2)."""

    state: State | None
    code: str  # "0000" success; "B3xx" warning; "C3xx" refused

    @property
    def refused(self) -> bool:
        return self.code.startswith("C")


# Change UPS State with the correct Transaction UID: (current, requested) → outcome (Table CC.1.1-2).
_WITH_CORRECT_UID: dict[tuple[State, State], Outcome] = {
    (State.SCHEDULED, State.IN_PROGRESS): Outcome(State.IN_PROGRESS, "0000"),
    (State.IN_PROGRESS, State.IN_PROGRESS): Outcome(None, "C302"),  # already IN PROGRESS
    (State.COMPLETED, State.IN_PROGRESS): Outcome(None, "C300"),  # may no longer be updated
    (State.CANCELED, State.IN_PROGRESS): Outcome(None, "C300"),
    (State.SCHEDULED, State.COMPLETED): Outcome(None, "C310"),  # not yet IN PROGRESS
    (State.IN_PROGRESS, State.COMPLETED): Outcome(State.COMPLETED, "0000"),
    (State.COMPLETED, State.COMPLETED): Outcome(None, "B306"),  # already COMPLETED
    (State.CANCELED, State.COMPLETED): Outcome(None, "C300"),
    (State.SCHEDULED, State.CANCELED): Outcome(None, "C310"),  # a SCHEDULED UPS is canceled by a cancel request
    (State.IN_PROGRESS, State.CANCELED): Outcome(State.CANCELED, "0000"),
    (State.COMPLETED, State.CANCELED): Outcome(None, "C300"),
    (State.CANCELED, State.CANCELED): Outcome(None, "B304"),  # already CANCELED
}


def change_state(current: State, held_uid: str | None, requested: State, given_uid: str) -> Outcome:
    """Change UPS State (PS3.4 CC.2.1.3): a claim records ``given_uid``; only its holder may change the UPS after.

    A UPS that was never claimed holds no Transaction UID: any given one is "correct" for the table.
    """
    if requested == State.SCHEDULED:
        return Outcome(None, "C303")  # a UPS becomes SCHEDULED only by N-CREATE
    if held_uid is not None and given_uid != held_uid:
        return Outcome(None, "C301")  # the correct Transaction UID was not provided
    return _WITH_CORRECT_UID[(current, requested)]


def request_cancel(current: State) -> Outcome:
    """Request UPS Cancel (PS3.4 CC.2.2.3, Table CC.2.2-2).

    A SCHEDULED UPS is canceled by the SCP; an IN PROGRESS one stays with its performer, who is told
    of the request (here: it is recorded in the workitem, for the performer to read).
    """
    return {
        State.SCHEDULED: Outcome(State.CANCELED, "0000"),
        State.IN_PROGRESS: Outcome(None, "0000"),
        State.COMPLETED: Outcome(None, "C311"),  # already COMPLETED
        State.CANCELED: Outcome(None, "B304"),  # already CANCELED
    }[current]


def parse_state(value: object, what: str) -> State:
    text = str(value or "").strip()
    try:
        return State(text)
    except ValueError:
        raise WorkitemProblem(
            f"{what} {text[:40]!r} is not a Procedure Step State; use IN PROGRESS, COMPLETED or CANCELED (PS3.18 11.7.1.4)"
        ) from None


def cancel_progress(information: dict) -> dict:
    """Request UPS Cancel information as Procedure Step Progress Information (PS3.3 C.30.2): the contact in a
    Procedure Step Communications URI Sequence item; a reason always, so that the owner finds one (CC.2.2.3)."""
    progress = {REASON_FOR_CANCELLATION: text_element("LT", "cancellation requested")}
    progress |= {tag: element for tag, element in information.items() if tag not in (CONTACT_URI, CONTACT_DISPLAY_NAME)}
    if CONTACT_URI in information:
        contact = {tag: information[tag] for tag in (CONTACT_URI, CONTACT_DISPLAY_NAME) if tag in information}
        progress[COMMUNICATIONS_URI_SEQUENCE] = {"vr": "SQ", "Value": [contact]}
    return progress


def with_progress(dataset: dict, information: dict) -> dict:
    """``dataset`` with ``information`` merged into the first item of its Procedure Step Progress Information Sequence."""
    sequence = dataset.get(PROGRESS_INFORMATION_SEQUENCE) or {"vr": "SQ", "Value": []}
    items = list(sequence.get("Value") or [])
    first = dict(items[0]) if items else {}
    first.update(information)
    return {**dataset, PROGRESS_INFORMATION_SEQUENCE: {"vr": "SQ", "Value": [first, *items[1:]]}}


# -- matching keys (PS3.4 Table CC.2.5-3, "Matching Key Type") -------------------------------------------------------


@dataclass(frozen=True)
class WorkitemKey:
    """A UPS matching key: a top-level attribute or one inside a sequence (``path`` of tags).

    It has the fields of ``query.MatchingKey`` that matching and lookup plans read (keyword, attribute, vr, hex, broad).
    """

    keyword: str
    path: tuple[str, ...]
    vr: str
    broad: bool = False

    @property
    def hex(self) -> str:
        return ".".join(self.path)

    @property
    def attribute(self) -> str:
        """The key's name in the lookup table."""
        return self.keyword


_CODE_VALUE = "00080100"
KEYS: tuple[WorkitemKey, ...] = (
    WorkitemKey("SOPInstanceUID", (SOP_INSTANCE_UID,), "UI"),
    WorkitemKey("PatientName", ("00100010",), "PN"),
    WorkitemKey("PatientID", ("00100020",), "LO"),
    WorkitemKey("ProcedureStepState", (PROCEDURE_STEP_STATE,), "CS", broad=True),
    WorkitemKey("ScheduledProcedureStepPriority", ("00741200",), "CS", broad=True),
    WorkitemKey("ScheduledProcedureStepStartDateTime", ("00404005",), "DT"),
    WorkitemKey("ExpectedCompletionDateTime", ("00404011",), "DT"),
    WorkitemKey("WorklistLabel", (WORKLIST_LABEL,), "LO"),
    WorkitemKey("ProcedureStepLabel", ("00741204",), "LO"),
    WorkitemKey("InputReadinessState", ("00404041",), "CS", broad=True),
    WorkitemKey("StudyInstanceUID", ("0020000D",), "UI"),
    WorkitemKey("ScheduledStationNameCodeSequence.CodeValue", ("00404025", _CODE_VALUE), "SH"),
    WorkitemKey("ScheduledStationClassCodeSequence.CodeValue", ("00404026", _CODE_VALUE), "SH"),
    WorkitemKey("ScheduledStationGeographicLocationCodeSequence.CodeValue", ("00404027", _CODE_VALUE), "SH"),
    WorkitemKey("ScheduledWorkitemCodeSequence.CodeValue", ("00404018", _CODE_VALUE), "SH"),
    WorkitemKey("ReferencedRequestSequence.AccessionNumber", ("0040A370", "00080050"), "SH"),
    WorkitemKey("ReferencedRequestSequence.RequestedProcedureID", ("0040A370", "00401001"), "SH"),
)
KEYS_BY_NAME: dict[str, WorkitemKey] = {key.keyword: key for key in KEYS} | {key.hex: key for key in KEYS}


def element_at(dataset: dict, key: WorkitemKey) -> dict:
    """The values ``key`` names as one element of its VR; inside a sequence, those of every item (PS3.4 C.2.2.2.6).

    Values of the wrong JSON type for the key (a number as a name, an object as a code) are left out:
    they match nothing and are never indexed, whatever a client stored.
    """
    if len(key.path) == 1:
        values = _values(dataset.get(key.path[0]))
    else:
        items = [item for item in _values(dataset.get(key.path[0])) if isinstance(item, dict)]
        values = [value for item in items for value in _values(item.get(key.path[1]))]
    return {"vr": key.vr, "Value": [value for value in values if _plausible(key.vr, value)]}


def _values(element: object) -> list:
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _plausible(vr: str, value: object) -> bool:
    if vr == "PN" and isinstance(value, dict):
        return all(isinstance(group, str) for group in value.values())
    return isinstance(value, str)

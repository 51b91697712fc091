"""The levels of the DICOM information model, the attributes each keeps, and the matching keys.

The study and series entities of the index keep the level attributes, so a search
answers from one entity per result (PS3.18 10.6.3.3 default return attributes, plus
the matching keys the service supports). ``KEYS`` is the one table of matching keys:
the QIDO-RS parser (dicom/query.py) accepts exactly these, and the index
(storage/lookup_plan.py) keeps lookup entries for exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

STUDY_TAGS: tuple[int, ...] = (
    0x00080005,  # SpecificCharacterSet
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080090,  # ReferringPhysicianName
    0x00080201,  # TimezoneOffsetFromUTC
    0x00081030,  # StudyDescription
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00100040,  # PatientSex
    0x0020000D,  # StudyInstanceUID
    0x00200010,  # StudyID
)

SERIES_TAGS: tuple[int, ...] = (
    0x00080005,  # SpecificCharacterSet
    0x00080021,  # SeriesDate
    0x00080031,  # SeriesTime
    0x00080060,  # Modality
    0x0008103E,  # SeriesDescription
    0x00081090,  # ManufacturerModelName
    0x00180015,  # BodyPartExamined
    0x0020000E,  # SeriesInstanceUID
    0x00200011,  # SeriesNumber
    0x00400244,  # PerformedProcedureStepStartDate
    0x00400245,  # PerformedProcedureStepStartTime
    0x00400275,  # RequestAttributesSequence
)

INSTANCE_TAGS: tuple[int, ...] = (
    0x00080005,  # SpecificCharacterSet
    0x00080016,  # SOPClassUID
    0x00080018,  # SOPInstanceUID
    0x0008002A,  # AcquisitionDateTime (a QIDO-RS matching key)
    0x00200013,  # InstanceNumber
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
)


def level_json(model: dict, tags: tuple[int, ...]) -> dict:
    """The attributes among ``tags`` of an instance's DICOM JSON ``model`` (PS3.18 F.2)."""
    keys = (f"{tag:08X}" for tag in tags)
    return {key: model[key] for key in keys if key in model}


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
    """A supported matching key. ``broad`` keys have few distinct values: poor drivers of a search.

    ``extended`` keys are the client's extended query tags (dicom/extended_tags.py), not in ``KEYS``.
    """

    keyword: str
    tag: int
    vr: str
    level: Level
    broad: bool = False
    extended: bool = False

    @property
    def hex(self) -> str:
        return f"{self.tag:08X}"

    @property
    def attribute(self) -> str:
        """The key's name in the lookup table: an extended tag's cannot collide with a standard keyword."""
        return f"x.{self.hex}" if self.extended else self.keyword


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
KEYS_BY_NAME = {key.keyword: key for key in KEYS} | {key.hex: key for key in KEYS}
UID_KEYS = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID", Level.INSTANCE: "SOPInstanceUID"}


# The attributes each level's index entity keeps (stored, or computed from its counts).
LEVEL_TAGS: dict[Level, frozenset[int]] = {
    Level.STUDY: frozenset(STUDY_TAGS) | {MODALITIES_IN_STUDY, NUMBER_OF_STUDY_RELATED_SERIES, NUMBER_OF_STUDY_RELATED_INSTANCES},
    Level.SERIES: frozenset(SERIES_TAGS) | {NUMBER_OF_SERIES_RELATED_INSTANCES},
    Level.INSTANCE: frozenset(INSTANCE_TAGS),
}

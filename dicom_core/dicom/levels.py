"""Which attributes belong to the study, series and instance levels.

The study and series entities of the index keep these attributes, so a search
answers from one entity per result (PS3.18 10.6.3.3 default return attributes,
plus the matching keys the service supports).
"""

from __future__ import annotations

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

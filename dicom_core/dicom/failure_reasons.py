"""Failure reasons of STOW-RS (FailureReason, 0008,1197), in one place (docs/errors.md).

The Azure DICOM service's numbers where it defines one, PS3.4 Annex B (Storage Service
Class status codes) otherwise. Every failed instance of a Store Instances Response
(PS3.18 Annex I) carries one of these and an ErrorComment saying why.
"""

from __future__ import annotations

PROCESSING_FAILURE = 272
"""0x0110: storage failed while storing the instance (the lake or the index could not be written)."""

OUT_OF_RESOURCES = 42752
"""0xA700: the instance (or the request) is larger than the configured maximum."""

VALIDATION_FAILED = 43264
"""0xA900: the data set does not validate (a required attribute missing or malformed, a limit exceeded)."""

STUDY_UID_MISMATCH = 43265
"""0xA901: the StudyInstanceUID differs from the study in the URL."""

INSTANCE_EXISTS = 45070
"""An instance with these UIDs is stored already (POST refuses it; PUT replaces it)."""

CANNOT_UNDERSTAND = 49152
"""0xC000: not a DICOM Part 10 file, or a part that is not application/dicom."""

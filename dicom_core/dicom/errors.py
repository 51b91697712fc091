"""The error DICOM helpers raise for bytes the service cannot accept."""

from __future__ import annotations


class InvalidInstance(ValueError):
    """The bytes are not an instance the service can store; the message says why."""


class UnreadableInstance(InvalidInstance):
    """The bytes are not a DICOM Part 10 file that can be read at all (as opposed to one that fails validation)."""

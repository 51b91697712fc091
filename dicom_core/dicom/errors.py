"""The error DICOM helpers raise for bytes the service cannot accept."""

from __future__ import annotations


class InvalidInstance(ValueError):
    """The bytes are not an instance the service can store; the message says why."""

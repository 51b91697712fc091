"""Instances of a study, series or instance as Part 10 files, as stored or transcoded (PS3.18 10.4.1.1.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dicom_core.dicom.transcode import TARGET_SYNTAXES, can_transcode, transcode
from dicom_core.errors import NotAcceptable
from dicom_core.operations.retrieve.finding import find_instances, with_instance
from dicom_core.operations.retrieve.reading import ReadAhead, as_received, open_file, read
from dicom_core.operations.retrieve.streams import in_order, single, started
from dicom_core.services import Services
from dicom_core.storage.layout import InstanceKey, Scope
from dicom_core.storage.records import InstanceRecord

AS_STORED = "*"
"""The ``transfer-syntax`` parameter value meaning "as stored" (PS3.18 8.7.3.5.1)."""
DICOM = "application/dicom"
_TARGETS = " or ".join(TARGET_SYNTAXES)


@dataclass
class Part:
    """One body part of a response: media type, transfer syntax, bytes, and its name in a zip file."""

    media_type: str
    transfer_syntax: str | None
    chunks: AsyncIterator[bytes]
    name: str = ""
    size: int | None = None
    """The byte count of ``chunks`` when it is known before they are read (a file or a frame as recorded), so that a
    response of this part alone is streamed with a Content-Length."""


def check_transfer_syntax(instances: list[InstanceRecord], transfer_syntax: str) -> None:
    """NotAcceptable unless every instance can be sent in ``transfer_syntax`` (a UID or ``*``)."""
    for instance in instances:
        if transfer_syntax in (AS_STORED, instance.transfer_syntax):
            continue
        if transfer_syntax not in TARGET_SYNTAXES:
            raise NotAcceptable(
                f"instance {instance.key.sop} is stored in transfer syntax {instance.transfer_syntax} and cannot be "
                f"transcoded to {transfer_syntax}; ask for transfer-syntax=* (as stored) or {_TARGETS}"
            )
        if not can_transcode(instance.transfer_syntax):
            raise NotAcceptable(
                f"instance {instance.key.sop} is stored in transfer syntax {instance.transfer_syntax}, which this service "
                f"cannot decode to {transfer_syntax}; ask for transfer-syntax=* to get it as stored"
            )


async def retrieve_instances(
    services: Services, target: Scope, transfer_syntax: str, *, original: bool = False
) -> AsyncIterator[Part]:
    """The instances of ``target`` as Part 10 files in ``transfer_syntax`` (``*``: as stored), in order.

    With ``original``, each instance a bulk update changed comes as first received.
    The first file is opened before this returns, so that a failure to read it
    (removed, modified, archived) is the response's status, not a broken stream.
    One instance may come from the cached record, or from a read sent with its index read (finding.with_instance).
    """
    if target.sop is not None and target.series is not None:
        key = InstanceKey(target.partition, target.study, target.series, target.sop)
        return await with_instance(
            services,
            key,
            lambda instance, ahead: _started([instance], services, transfer_syntax, original, ahead),
            read_ahead=True,
        )
    return await _started(await find_instances(services, target), services, transfer_syntax, original)


async def _started(
    instances: list[InstanceRecord],
    services: Services,
    transfer_syntax: str,
    original: bool,
    ahead: ReadAhead | None = None,
) -> AsyncIterator[Part]:
    check_transfer_syntax(instances, transfer_syntax)
    if original:
        instances = [as_received(instance) for instance in instances]
    return await started(
        in_order(instances, lambda instance: _open_instance(services, instance, transfer_syntax, original, ahead))
    )


async def _open_instance(
    services: Services, instance: InstanceRecord, transfer_syntax: str, original: bool, ahead: ReadAhead | None
) -> Part:
    name = f"{instance.key.study}/{instance.key.series}/{instance.key.sop}.dcm"
    if transfer_syntax in (AS_STORED, instance.transfer_syntax):
        # The index records the size of the current file only, not of an original a bulk update kept.
        size = None if original and instance.original_path else instance.size
        return Part(DICOM, instance.transfer_syntax, await open_file(services, instance, ahead=ahead), name, size)
    data = await read(services, instance, ahead=ahead)
    try:
        transcoded = await asyncio.to_thread(transcode, data, transfer_syntax)
    except Exception as error:  # decoders and encoders raise many types on pixel data they cannot handle
        raise NotAcceptable(
            f"instance {instance.key.sop} could not be transcoded from {instance.transfer_syntax} to {transfer_syntax} "
            f"({type(error).__name__}: {error}); ask for transfer-syntax=* to get it as stored"
        ) from error
    return Part(DICOM, transfer_syntax, single(transcoded), name, len(transcoded))

"""GET /v2/partitions: the DICOM partitions that hold data, as the Azure DICOM v2 API lists them.

Azure numbers partitions by creation (``partitionKey``) and records when each was created.
Partitions here are names in the index keys, created by their first store, so the list
comes from the studies table (one query per partition, storage/index.py): ``partitionKey``
is the position in name order, ``createdDate`` the time the first study of the partition
(in UID order) was last written.
"""

from __future__ import annotations

from dicom_core.services import Services


async def list_partitions(services: Services) -> list[dict]:
    return [
        {"partitionKey": position, "partitionName": name, "createdDate": created.isoformat()}
        for position, (name, created) in enumerate(await services.index.partitions(), start=1)
    ]

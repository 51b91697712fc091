"""Run the pending long-running operations in this process and SIGKILL it at the Nth call of an adapter method.

``python -m tests.operations_crash Lake.splice:2`` (tests/test_bulk_update.py): the operations
worker of ``python -m dicom_core`` (``run_operations``), with the kill switch of
tests/kill_server.py. Settings come from the environment, as for ``python -m dicom_core``.
"""

from __future__ import annotations

import asyncio
import sys

from dicom_core.events import run_operations
from dicom_core.services import Services
from dicom_core.settings import Settings
from tests.kill_server import arm


async def main() -> None:
    services = await Services.open(Settings.from_environment())
    await run_operations(services, owner="doomed-worker")


if __name__ == "__main__":
    arm(sys.argv[1])
    asyncio.run(main())

"""Run the pending long-running operations in this process and SIGKILL it at the Nth call of an adapter method.

``python -m tests.operations_crash Lake.splice:2`` (``kill_operations_worker``): the operations
worker of ``python -m dicom_core`` (``run_operations``), with the kill switch of
tests/kill_server.py. Settings come from the environment, as for ``python -m dicom_core``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from dicom_core.events import run_operations
from dicom_core.local.azurite import REPOSITORY_ROOT
from dicom_core.services import Services
from dicom_core.settings import Settings
from tests.environments import server_environment
from tests.kill_server import arm

LEASE_SECONDS = 1


def kill_operations_worker(settings: Settings, kill_at: str) -> None:
    """Run a worker over ``settings`` until it is SIGKILLed at ``kill_at``, then wait until its lease has run out."""
    killed = subprocess.run(
        [sys.executable, "-m", "tests.operations_crash", kill_at],
        cwd=REPOSITORY_ROOT, env=server_environment(settings) | {"DICOM_OPERATION_LEASE_SECONDS": str(LEASE_SECONDS)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    time.sleep(LEASE_SECONDS + 0.2)


async def main() -> None:
    services = await Services.open(Settings.from_environment())
    await run_operations(services, owner="doomed-worker")


if __name__ == "__main__":
    arm(sys.argv[1])
    asyncio.run(main())

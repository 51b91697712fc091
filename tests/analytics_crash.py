"""Run one analytics sync in this process and SIGKILL it at a chosen Delta commit (tests/test_analytics.py).

``python -m tests.analytics_crash {before|after} N BATCH``: the process kills itself
just before, or just after, the N-th Delta commit of the sync (the commits that carry
data and the feed position together), with BATCH feed entries per commit. Settings
come from the environment, as for ``python -m dicom_core``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from dicom_core.operations.analytics import open_tables, sync
from dicom_core.services import Services
from dicom_core.settings import Settings


async def main(when: str, commit: int, batch_size: int) -> None:
    services = await Services.open(Settings.from_environment())
    tables = await open_tables(services)
    replace = tables.replace
    commits = 0

    async def replace_then_maybe_die(*arguments, **keywords) -> None:
        nonlocal commits
        commits += 1
        if when == "before" and commits == commit:
            os.kill(os.getpid(), signal.SIGKILL)
        await replace(*arguments, **keywords)
        if when == "after" and commits == commit:
            os.kill(os.getpid(), signal.SIGKILL)

    tables.replace = replace_then_maybe_die
    await sync(services, tables, batch_size=batch_size)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))

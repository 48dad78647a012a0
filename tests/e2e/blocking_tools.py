"""Tools for fault tests that block until the test says so, and log every run they start.

``register()`` adds them to the registry: the worker and server processes call it from
``tests.e2e.worker_settings``, the test process from a fixture.
"""

import os
import time
from pathlib import Path

from pydantic import Field

from tools.registry import tool
from tools.schemas import ToolInput

NAMES = ("test_block", "test_block_retry_safe")


class BlockInput(ToolInput):
    directory: str = Field(description="Where the run logs itself and waits for 'release'.")


def block(args: BlockInput, ctx) -> str:
    """Appends ``start <pid>``, waits for the file ``release``, appends ``end <pid>``."""
    directory = Path(args.directory)
    _log(directory, "start")
    deadline = time.monotonic() + 120
    while not (directory / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    _log(directory, "end")
    return f"released in {os.getpid()}"


def _log(directory: Path, event: str) -> None:
    with open(directory / "runs.log", "a") as log:
        log.write(f"{event} {os.getpid()} {time.time():.3f}\n")


def register() -> None:
    # Read-only: no transaction is held while they wait (SQLite has one writer).
    for name, retry_safe in ((NAMES[0], False), (NAMES[1], True)):
        tool(
            name=name,
            description="Blocks until released (fault tests).",
            input=BlockInput,
            writes=False,
            requires_approval=True,
            retry_safe=retry_safe,
        )(block)

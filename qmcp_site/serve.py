"""The production server: uvicorn on uvloop and httptools, with the slow-reader protocol.

    SECRET_KEY=... .venv/bin/python -m qmcp_site.serve --host 0.0.0.0 --port 8000 --workers 2

(``make prod`` runs it.) Daphne stays the server of ``manage.py runserver``. With more than
one worker, set ``DATABASE_URL`` to PostgreSQL and ``REDIS_URL``, so that the workers share
the channel layer and the rate limits. uvicorn takes the client's address from
``X-Forwarded-For`` only when the proxy's address is in ``FORWARDED_ALLOW_IPS`` (default
127.0.0.1). The process runs under Linux's ``SCHED_BATCH`` (:func:`no_wakeup_preemption`;
``QMCP_SCHED_BATCH=0`` keeps the default policy).
"""

import argparse
import logging
import os

import uvicorn

from qmcp_site.env import env_bool

logger = logging.getLogger(__name__)

APPLICATION = "qmcp_site.asgi:application"
OPTIONS = {
    "loop": "uvloop",
    "http": "qmcp_site.slow_readers:HttpToolsProtocol",
    # Channels' router serves no lifespan events, and daphne's access log is not wanted.
    "lifespan": "off",
    "access_log": False,
}


def no_wakeup_preemption() -> bool:
    """Puts this process under Linux's ``SCHED_BATCH`` (the same fair share and nice value
    as the default policy, without wake-up preemption), so that the threads and worker
    processes it starts inherit it; unless ``QMCP_SCHED_BATCH=0``. True when it applies.

    The event loop and the database threads share one GIL. When one wakes the other (a job
    handed over, a batch's end), the default policy switches at once to the woken thread,
    which then waits for the GIL its waker holds, and back: about ten switches per batch
    at eight agents at once, a tenth of the server's CPU in ``perf``. Under SCHED_BATCH the
    waker runs on until it blocks (``benchmarks/RESULTS.md``: 9% less CPU a call on
    PostgreSQL at c=8)."""
    if not env_bool("QMCP_SCHED_BATCH", True):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or refused
        logger.info("SCHED_BATCH not applied: %s", exc)
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve QMCP in production (uvicorn).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    no_wakeup_preemption()
    uvicorn.run(APPLICATION, host=args.host, port=args.port, workers=args.workers, **OPTIONS)


if __name__ == "__main__":
    main()

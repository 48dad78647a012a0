"""The production server: uvicorn on uvloop and httptools, with the slow-reader protocol.

    SECRET_KEY=... .venv/bin/python -m qmcp_site.serve --host 0.0.0.0 --port 8000 --workers 2

(``make prod`` runs it.) Daphne stays the server of ``manage.py runserver``. With more than
one worker, set ``DATABASE_URL`` to PostgreSQL and ``REDIS_URL``, so that the workers share
the channel layer and the rate limits. uvicorn takes the client's address from
``X-Forwarded-For`` only when the proxy's address is in ``FORWARDED_ALLOW_IPS`` (default
127.0.0.1).
"""

import argparse

import uvicorn

APPLICATION = "qmcp_site.asgi:application"
OPTIONS = {
    "loop": "uvloop",
    "http": "qmcp_site.slow_readers:HttpToolsProtocol",
    # Channels' router serves no lifespan events, and daphne's access log is not wanted.
    "lifespan": "off",
    "access_log": False,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve QMCP in production (uvicorn).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    uvicorn.run(APPLICATION, host=args.host, port=args.port, workers=args.workers, **OPTIONS)


if __name__ == "__main__":
    main()

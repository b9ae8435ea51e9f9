"""``python -m service [--host H] [--port P]`` starts the API; ``python -m service openapi``
prints the OpenAPI document."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path

from jobs.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "openapi"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "openapi":
        import tempfile

        from service.app import create_app

        with tempfile.TemporaryDirectory() as scratch:  # no job database or folders left here
            app = create_app(settings.model_copy(update={"artifact_dir": Path(scratch)}))
            print(json.dumps(app.openapi(), indent=2, sort_keys=True))
        return 0
    if not settings.api_keys and not is_loopback(args.host):
        print(
            f"error: refusing to listen on {args.host} without API keys; set EXPLAINER_API_KEYS "
            "or keep the default 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    from engine.runtime import keep_freed_memory
    from jobs.sqlite_store import JobDatabaseError
    from service.app import READ_HEADER_BYTES, create_app

    keep_freed_memory()
    try:
        app = create_app(settings)
    except JobDatabaseError as error:  # one line that says what to do, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    mode = (
        "embedded (in-process worker)"
        if settings.embedded
        else f"distributed ({settings.broker_url})"
    )
    print(f"Explainer API on http://{args.host}:{args.port} — {mode}", file=sys.stderr)
    # The parser reads headers up to READ_HEADER_BYTES, so that the app answers an oversized
    # one with a 431 instead of a connection closed mid-request.
    uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                h11_max_incomplete_event_size=READ_HEADER_BYTES)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

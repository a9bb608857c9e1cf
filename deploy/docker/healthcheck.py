#!/usr/bin/env python3
"""Container health probe for Docker's HEALTHCHECK (the slim base image has no curl).

    ragtune-healthcheck                               # GET http://127.0.0.1:8000/health
    ragtune-healthcheck http://127.0.0.1:8000/ready   # any HTTP URL: healthy on a 2xx answer
    ragtune-healthcheck tcp://127.0.0.1:8001          # healthy when the port accepts a connection

Exit 0 when healthy, 1 otherwise (with the reason on stderr, which `docker inspect` shows).
The tcp form serves the LLM server, whose readiness is "the port is open": uvicorn binds only after
the application's startup (model loading) has finished.
"""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_S = 4.0


def check(target: str) -> str | None:
    """Returns None when healthy, else the reason."""
    parsed = urllib.parse.urlsplit(target)
    if parsed.scheme == "tcp":
        if not parsed.hostname or not parsed.port:
            return f"{target}: expected tcp://HOST:PORT"
        try:
            with socket.create_connection((parsed.hostname, parsed.port), timeout=TIMEOUT_S):
                return None
        except OSError as exc:
            return f"{target}: {exc}"
    if parsed.scheme not in ("http", "https"):
        return f"{target}: expected an http(s):// or tcp:// URL"
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT_S) as response:  # noqa: S310 (scheme checked)
            return None if 200 <= response.status < 300 else f"{target}: HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{target}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{target}: {exc}"


def main(argv: list[str]) -> int:
    target = argv[1] if len(argv) > 1 else "http://127.0.0.1:8000/health"
    problem = check(target)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""A container's health check: ``python -m services.common.healthcheck MODEL_PORT``.

Asks the service's own ``GET /health`` on the port named by the given setting and exits 0
on a 200, 1 otherwise (a 503 with its reason, no answer, a timeout). Standard library only:
Docker runs it every few seconds, and slim images have no curl.
"""

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

WILDCARD_HOSTS = {"", "0.0.0.0", "::"}  # noqa: S104 - recognises a wildcard address, binds nothing


def health_url(environ: Mapping[str, str], port_setting: str) -> str:
    """The /health URL of the service listening on ``HTTP_HOST`` and ``environ[port_setting]``."""
    port = environ.get(port_setting, "")
    if not port.isdigit():
        raise ValueError(f"{port_setting} is {port!r}: set it to the service's port (the image sets it)")
    host = environ.get("HTTP_HOST", "").strip()
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"  # listening on every interface: ask over loopback
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/health"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m services.common.healthcheck PORT_SETTING (e.g. MODEL_PORT)", file=sys.stderr)
        return 2
    try:
        url = health_url(os.environ, argv[0])
        with urllib.request.urlopen(url, timeout=4) as answer:  # noqa: S310 - health_url builds only http:// URLs
            answer.read()
    except urllib.error.HTTPError as exc:
        print(f"{exc.url}: {exc.code} {exc.read().decode(errors='replace')[:500]}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"health check failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

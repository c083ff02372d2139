"""A plain HTTP client for tests: httpx when installed, else urllib; never raises on status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HttpResponse:
    """A plain HTTP answer: status, headers (lower-case names) and raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON."""
        return json.loads(self.body)


def http_request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
    client: Any = None,
) -> HttpResponse:
    """Send one request with httpx when it is installed, else urllib; never raises on status.

    ``client`` may be an open ``httpx.Client`` to reuse (keep-alive, and no per-call setup).
    """
    if client is None:
        try:
            import httpx
        except ImportError:
            pass
        else:
            # A plain-http URL needs no CA bundle; loading one costs ~30 ms per call.
            with httpx.Client(verify=not url.startswith("http://"), timeout=timeout) as one:
                return http_request(method, url, headers=headers, body=body, client=one)
    if client is not None:
        resp = client.request(method, url, headers=dict(headers or {}), content=body)
        return HttpResponse(
            resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content
        )
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as raw:
            return HttpResponse(
                raw.status, {k.lower(): v for k, v in raw.headers.items()}, raw.read()
            )
    except urllib.error.HTTPError as err:
        with err:
            return HttpResponse(
                err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()
            )

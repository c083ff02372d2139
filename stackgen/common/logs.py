"""JSON logs for the in-cluster processes (dispatcher, metrics adapter), with structlog.

One JSON object per line on stderr.  A redaction processor removes every registered
secret (the agent token, webhook token) from every value before a line is written:
a last line of defence, not an excuse to log secrets.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line (short values are ignored: too many false hits)."""
    if value and len(value) >= 6:
        with _lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """Replace every registered secret in ``text``."""
    with _lock:
        secrets = list(_secrets)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if isinstance(value, str):
            event[key] = scrub(value)
        elif isinstance(value, (list, tuple, dict)):
            event[key] = _scrub_nested(value)
    return event


def _scrub_nested(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_nested(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub_nested(v) for v in value]
    return value


def configure(level: str = "info", *, stream: TextIO | None = None, component: str = "") -> None:
    """Set up structlog for JSON lines at ``level`` on ``stream`` (default stderr)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component:
        processors.append(_add_component(component))
    processors += [
        structlog.processors.format_exc_info,
        _redact,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def _add_component(component: str) -> Any:
    def add(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("component", component)
        return event

    return add


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context."""
    return structlog.get_logger().bind(**bound)

"""Buildkite webhooks (and EventBridge "Job Scheduled" events): verify, then say which queue.

A delivery is trusted when it carries either ``X-Buildkite-Token`` equal to the webhook
token, or ``X-Buildkite-Signature: timestamp=<unix>,signature=<hex>`` where the
signature is HMAC-SHA256(key=token, message="<timestamp>.<raw body>") and the timestamp
is no older (nor further in the future) than the allowed age.  Anything else is
refused.  A signed delivery is good once: its signature is remembered while its
timestamp is within the allowed age (:class:`ReplayGuard`), and a repeat is dropped.  A
verified event only triggers an early cycle: polling stays on, so a lost or refused
delivery strands nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

#: Signatures remembered at most (a full guard forgets the oldest first).
MAX_REMEMBERED = 10_000


class WebhookRejected(Exception):
    """The delivery is not from Buildkite (or is a replay); answer 401."""


@dataclass(frozen=True)
class WebhookEvent:
    """What a verified delivery asks for."""

    event: str
    #: Queues named by the job's agent query rules; empty when it names none.
    queues: tuple[str, ...]
    job_uuid: str | None
    source: str  # "webhook" or "eventbridge"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def verify(
    headers: Mapping[str, str], body: bytes, token: str, *, now: float, max_age: float
) -> None:
    """Raise WebhookRejected unless the delivery is signed or carries the token."""
    if not token:
        raise WebhookRejected("no webhook token configured")
    signature = _header(headers, "X-Buildkite-Signature")
    if signature is not None:
        stamp, digest = _signature(signature)
        if not stamp.isdigit() or not digest:
            raise WebhookRejected("malformed X-Buildkite-Signature")
        expected = hmac.new(
            token.encode(), stamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, digest.lower()):
            raise WebhookRejected("signature does not match")
        if abs(now - int(stamp)) > max_age:
            raise WebhookRejected("signature timestamp is stale")
        return
    presented = _header(headers, "X-Buildkite-Token")
    if presented is None:
        raise WebhookRejected("neither X-Buildkite-Signature nor X-Buildkite-Token present")
    if not hmac.compare_digest(presented.encode(), token.encode()):
        raise WebhookRejected("token does not match")


def _signature(header: str) -> tuple[str, str]:
    """(timestamp, signature) of an ``X-Buildkite-Signature`` header."""
    fields = dict(part.strip().split("=", 1) for part in header.split(",") if "=" in part)
    return fields.get("timestamp", ""), fields.get("signature", "").lower()


class ReplayGuard:
    """The signatures of deliveries accepted while they are still valid: a repeat is a replay.

    A signature is remembered until its timestamp is older than the allowed age (then
    :func:`verify` refuses it as stale anyway), and at most :data:`MAX_REMEMBERED` of them.
    Deliveries that carry the token instead of a signature cannot be told apart from a
    repeat: Buildkite's signature is what makes a delivery unique.
    """

    def __init__(self, max_age: float, limit: int = MAX_REMEMBERED) -> None:
        self.max_age = max_age
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, headers: Mapping[str, str], now: float) -> bool:
        """Remember a verified delivery's signature; False when it was seen before."""
        header = _header(headers, "X-Buildkite-Signature")
        if header is None:
            return True
        stamp, digest = _signature(header)
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now:
                self._seen.popitem(last=False)  # no longer valid: verify refuses it as stale
            if digest in self._seen:
                return False
            self._seen[digest] = int(stamp) + self.max_age
            while len(self._seen) > self.limit:
                self._seen.popitem(last=False)
            return True


def _queues(rules: object) -> tuple[str, ...]:
    if not isinstance(rules, list):
        return ()
    out = []
    for rule in rules:
        if isinstance(rule, str) and rule.startswith("queue="):
            out.append(rule.removeprefix("queue="))
    return tuple(out)


def parse(headers: Mapping[str, str], body: bytes) -> WebhookEvent:
    """Read a verified delivery: a Buildkite webhook or an EventBridge event."""
    try:
        data = json.loads(body or b"{}")
    except ValueError as exc:
        raise ValueError("body is not JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("body is not a JSON object")
    if "detail-type" in data:  # EventBridge
        detail = data.get("detail") or {}
        job = detail.get("job") or {} if isinstance(detail, dict) else {}
        kind = str(data.get("detail-type"))
        return WebhookEvent(
            event="job.scheduled" if kind == "Job Scheduled" else kind,
            queues=_queues(job.get("agent_query_rules")),
            job_uuid=job.get("uuid") if isinstance(job.get("uuid"), str) else None,
            source="eventbridge",
        )
    event = _header(headers, "X-Buildkite-Event") or str(data.get("event", ""))
    job = data.get("job") or {}
    if not isinstance(job, dict):
        job = {}
    return WebhookEvent(
        event=event,
        queues=_queues(job.get("agent_query_rules")),
        job_uuid=job.get("id") if isinstance(job.get("id"), str) else None,
        source="webhook",
    )

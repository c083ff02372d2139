"""Polls Buildkite and fills the metric store (the adapter's only outbound I/O).

Counts come from ``GET /v3/metrics`` every ``interval`` seconds, or less often when
Buildkite's ``Buildkite-Agent-Metrics-Poll-Duration`` header asks for it.  A failed poll
is retried with exponential backoff (full jitter, at least the server's Retry-After) and
never ends the loop; the store turns the missing data into "stale" errors.

Oldest-job ages come from the Stacks API's scheduled-jobs list (oldest first), which needs
a cluster agent token and a registered stack per queue.  They are polled only when a stack
key prefix is configured; otherwise, or with an unclustered token, the age metric answers
"not available" with the reason.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from stackgen.adapter.store import AGE_METRIC, SOURCE_COUNTS, SOURCE_JOBS, MetricStore
from stackgen.buildkite import AgentAPI, Backoff, BuildkiteError, NotFound, RateLimited
from stackgen.buildkite.models import RegisteredStack
from stackgen.common.logs import get_logger
from stackgen.common.names import METRICS_ADAPTER

__all__ = ["Poller", "stack_key_for"]

_KEY_OK = re.compile(r"[A-Za-z0-9_-]")


def stack_key_for(prefix: str, queue: str) -> str:
    """The Stacks API key the adapter registers for ``queue`` (1-80 of ``[A-Za-z0-9_-]``)."""
    slug = "".join(c if _KEY_OK.fullmatch(c) else "-" for c in queue)
    if slug != queue:  # keep keys of queues that differ only in odd characters apart
        slug += "-" + hashlib.sha256(queue.encode()).hexdigest()[:6]
    key = f"{prefix}-{slug}"
    if len(key) > 80:
        key = key[:73] + "-" + hashlib.sha256(key.encode()).hexdigest()[:6]
    return key


class Poller:
    """One thread's worth of polling; :meth:`poll_once` is one cycle (tests call it)."""

    def __init__(
        self,
        api: AgentAPI,
        store: MetricStore,
        *,
        interval: float,
        queues: Sequence[str] = (),
        stack_key_prefix: str | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        on_poll: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.interval = float(interval)
        self.queues = tuple(queues)
        self.prefix = stack_key_prefix or None
        self.backoff = backoff or Backoff(base=1.0, cap=60.0)
        self._on_poll = on_poll or (lambda source, ok: None)
        self._clock = clock
        self._log = get_logger()
        self._stacks: dict[str, RegisteredStack] = {}
        self._ages_enabled = False
        self._identity_checked = False
        self._ages_not_before = 0.0
        self.cycles = 0
        self.last_cycle_at: float | None = None
        self._configure_ages()

    def _configure_ages(self) -> None:
        if not self.prefix:
            self.store.set_unavailable(
                AGE_METRIC,
                "polling job ages is off: set --stack-key-prefix (STACKGEN_STACK_KEY_PREFIX) "
                "and use a cluster agent token (Buildkite's Stacks API is the only source of "
                "job ages; the metrics endpoint has counts only)",
            )
        elif not self.queues:
            self.store.set_unavailable(
                AGE_METRIC, "job ages are polled per configured queue: set --queues"
            )
        else:
            self._ages_enabled = True

    # ------------------------------------------------------------------ one cycle

    def poll_once(self) -> float:
        """Poll once; return the seconds to wait before the next cycle."""
        self.cycles += 1
        self.last_cycle_at = self._clock()
        try:
            snapshot = self.api.metrics()
        except BuildkiteError as exc:
            self.store.record_failure(SOURCE_COUNTS, str(exc))
            self._on_poll(SOURCE_COUNTS, False)
            delay = self.backoff.next_delay(exc.retry_after)
            self._log.warning(
                "buildkite metrics poll failed",
                error=str(exc),
                error_type=type(exc).__name__,
                retry_in_seconds=round(delay, 2),
            )
            return delay
        self.backoff.reset()
        interval = max(self.interval, snapshot.poll_after or 0.0)
        self.store.set_interval(interval)
        self.store.record_snapshot(snapshot, at=self._clock())
        self._on_poll(SOURCE_COUNTS, True)
        self._log.debug(
            "buildkite metrics polled",
            queues={
                name: {"scheduled": q.scheduled, "running": q.running, "busy": q.busy_agents}
                for name, q in snapshot.queues.items()
            },
            next_poll_seconds=interval,
        )
        if self._ages_enabled and self._clock() >= self._ages_not_before:
            self._poll_ages()
        return interval

    def _poll_ages(self) -> None:
        try:
            if not self._identity_checked:
                identity = self.api.token_identity()
                self._identity_checked = True
                if not identity.get("cluster_uuid"):
                    self._ages_enabled = False
                    self.store.set_unavailable(
                        AGE_METRIC,
                        "the agent token is not a cluster token: Buildkite's Stacks API "
                        "(the only source of job ages) needs one",
                    )
                    self._log.warning("oldest-job age unavailable: unclustered agent token")
                    return
            ages: dict[str, float] = {}
            now = self._clock()
            for queue in self.queues:
                try:
                    age = self._queue_age(queue, now)
                except RateLimited:
                    raise  # stop this round: every further call would be refused too
                except BuildkiteError as exc:  # this queue only (e.g. not a cluster queue)
                    self.store.record_failure(SOURCE_JOBS, f"queue {queue!r}: {exc}")
                    self._log.warning(
                        "buildkite scheduled-jobs poll failed", queue=queue, error=str(exc)
                    )
                    continue
                if age is not None:
                    ages[queue] = age
            if ages:
                self.store.record_ages(ages, at=now)
            self._on_poll(SOURCE_JOBS, True)
        except BuildkiteError as exc:
            self.store.record_failure(SOURCE_JOBS, str(exc))
            self._on_poll(SOURCE_JOBS, False)
            if exc.retry_after:
                self._ages_not_before = self._clock() + exc.retry_after
            self._log.warning(
                "buildkite scheduled-jobs poll failed",
                error=str(exc),
                error_type=type(exc).__name__,
            )

    def _queue_age(self, queue: str, now: float) -> float | None:
        assert self.prefix is not None
        stack = self._stacks.get(queue)
        if stack is None:
            stack = self.api.register_stack(
                stack_key_for(self.prefix, queue),
                queue_key=queue,
                metadata={"component": METRICS_ADAPTER, "purpose": "job ages"},
            )
            self._stacks[queue] = stack
        try:
            page = self.api.scheduled_jobs(stack.key, stack.queue_key, limit=1)
        except NotFound as exc:
            # The stack was deregistered or the queue is gone: register again next time.
            self._stacks.pop(queue, None)
            self.store.record_failure(SOURCE_JOBS, f"queue {queue!r}: {exc}")
            return None
        if not page.jobs or page.jobs[0].scheduled_at is None:
            return 0.0
        return max(0.0, now - page.jobs[0].scheduled_at)

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; a failing cycle never ends the loop."""
        while not stop.is_set():
            try:
                delay = self.poll_once()
            except Exception as exc:  # a bug: log it, keep the process serving
                self.store.record_failure(SOURCE_COUNTS, f"internal error: {exc!r}")
                self._log.exception("poll cycle crashed")
                delay = self.backoff.next_delay()
            stop.wait(delay)

    def describe(self) -> dict[str, Any]:
        """What the poller does (logged at start-up)."""
        return {
            "endpoint": self.api.endpoint,
            "interval_seconds": self.interval,
            "queues": list(self.queues),
            "job_ages": self._ages_enabled,
        }

"""When each queue is looked at: the dispatcher's timing decisions, pure and clock-driven.

No I/O and no clock of its own: every method takes ``now``.  The loop (:mod:`.cycle`)
asks it which queues are due and when to wake, and tells it what each cycle found;
``bench/lib/sim.py`` drives this same object on a virtual clock, so the simulator's
timing is the loop's, not a model of it.  One lock makes it safe to share between the
loop, the lanes' workers and the HTTP threads that deliver webhooks.

* **Polls**: a queue is next due one poll interval (or Buildkite's longer poll-duration
  hint) after the *start* of the cycle that served it, so queues polled together stay
  together; a cycle takes every queue due within :data:`ALIGN_WINDOW`.
* **Rechecks**: a queue held by its cooldown is looked at again within
  :data:`COOLDOWN_RECHECK`; one whose scheduled jobs were left to agents that are not busy
  within :data:`PICKUP_RECHECK`.
* **Webhooks**: a delivery naming queues triggers a cycle for them, at most one per queue
  per :data:`TRIGGER_GAP` (a burst for one queue is one cycle; other queues do not wait).
* **Faults**: a queue whose cycle failed is retried with exponential backoff (full jitter,
  at least the server's Retry-After); the backoff grows until a cycle of the queue
  succeeds end to end (a successful Buildkite call alone does not reset it).  A retry
  before the queue's next poll re-uses the demand it read (:meth:`Schedule.reuse_demand`),
  so a failing Kubernetes never makes it call Buildkite faster than its poll period.
  A missing template backs off no further than the poll period (it is a state someone
  will fix, not an overload).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from stackgen.buildkite import Backoff
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.planner import Demand, Plan

#: Webhook-triggered cycles run at most this often per queue: at most 5 job lists a second
#: per exact queue (Buildkite allows 10), while deliveries arriving during a cycle wait at
#: most this long after it (bench/e2e: the second wave of a fan-out waits for it).
TRIGGER_GAP = 0.2
#: Queues due within this much of a poll cycle are served in it (one Job list for all).
ALIGN_WINDOW = 0.25
#: A queue held by its cooldown is looked at again this soon, not at its next poll.
COOLDOWN_RECHECK = 1.0
#: A queue whose scheduled jobs were left to agents we already have (idle, or still
#: starting) is looked at again this soon: if they do not take them (an agent just exited
#: and Kubernetes had not caught up), agents are dispatched then, not at the next poll.
PICKUP_RECHECK = 2.0
#: A failed queue is retried no sooner than this.
MIN_RETRY = 0.2
#: Float slack when comparing times that were computed as sums.
_EPSILON = 1e-9


def expects_pickup(queue: DispatchedQueue, demand: Demand, plan: Plan) -> bool:
    """Scheduled jobs were left to agents that are not busy (idle, or still starting)."""
    return (
        queue.mode == "dispatch"
        and demand.scheduled > 0
        and plan.agents_dispatched == 0
        and plan.supply > demand.running
    )


class Schedule:
    """Per queue: when it is next due, its backoff, and webhook triggers waiting."""

    def __init__(
        self,
        queues: Mapping[str, DispatchedQueue],
        *,
        start: float = 0.0,
        backoff: Callable[[], Backoff] = lambda: Backoff(base=1.0, cap=60.0),
    ) -> None:
        self.queues = dict(queues)
        self.next_due: dict[str, float] = dict.fromkeys(self.queues, start)
        #: When each queue's demand must be read again (its poll period after the last read).
        self.next_poll: dict[str, float] = dict.fromkeys(self.queues, start)
        self.poll_period: dict[str, float] = {
            q: c.dispatch.poll_interval_seconds for q, c in self.queues.items()
        }
        self.backoff: dict[str, Backoff] = {q: backoff() for q in self.queues}
        self.retrying: set[str] = set()
        #: Triggered queues waiting for their cycle, and what triggered them.
        self.triggered: dict[str, str] = {}
        self.last_triggered: dict[str, float] = {}
        self._lock = threading.RLock()

    # ---------------------------------------------------------------------- polls

    def due(self, now: float, among: Iterable[str] | None = None) -> list[str]:
        """The queues a poll cycle at ``now`` serves (those due within the align window)."""
        with self._lock:
            names = self.queues if among is None else [q for q in self.queues if q in among]
            return [q for q in names if now >= self.next_due[q] - ALIGN_WINDOW]

    def any_due(self, now: float, among: Iterable[str] | None = None) -> bool:
        """Whether a poll cycle is due at ``now``."""
        with self._lock:
            names = self.queues if among is None else [q for q in self.queues if q in among]
            return any(now >= self.next_due[q] - _EPSILON for q in names)

    def polled(self, queue: str, started: float, hint: float | None = None) -> None:
        """The queue's demand was read in the cycle that started at ``started``."""
        with self._lock:
            period = max(self.queues[queue].dispatch.poll_interval_seconds, hint or 0.0)
            self.poll_period[queue] = period
            self.next_poll[queue] = self.next_due[queue] = started + period

    def reuse_demand(self, queue: str, now: float) -> bool:
        """A retry of a failed cycle before the queue's next poll: use the demand read."""
        with self._lock:
            return queue in self.retrying and now < self.next_poll[queue] - ALIGN_WINDOW

    def succeeded(self, queue: str) -> None:
        """A cycle of the queue went through end to end: forget its failures."""
        with self._lock:
            self.backoff[queue].reset()
            self.retrying.discard(queue)

    def planned(self, queue: DispatchedQueue, demand: Demand, plan: Plan, now: float) -> None:
        """A plan was made: look again soon if it waits on a cooldown or on a pickup."""
        if plan.cooldown:
            self._recheck(queue.name, now + COOLDOWN_RECHECK)
        elif expects_pickup(queue, demand, plan):
            self._recheck(queue.name, now + PICKUP_RECHECK)

    def failed(
        self,
        queue: str,
        now: float,
        retry_after: float | None = None,
        *,
        within_poll: bool = False,
    ) -> float:
        """A call for the queue failed: retry it after a backoff; returns the delay.

        ``within_poll``: a condition someone must fix (a missing template): the retries
        grow no further apart than the queue's poll period.
        """
        with self._lock:
            delay = max(self.backoff[queue].next_delay(retry_after), MIN_RETRY)
            if within_poll:
                delay = min(delay, max(self.poll_period[queue], retry_after or 0.0))
            self.next_due[queue] = now + delay
            self.retrying.add(queue)
            return delay

    def _recheck(self, queue: str, at: float) -> None:
        with self._lock:
            self.next_due[queue] = min(self.next_due[queue], at)

    # ------------------------------------------------------------------- triggers

    def trigger(self, queues: Iterable[str] = (), source: str = "webhook") -> None:
        """A webhook named these queues (all queues when it named none we serve)."""
        with self._lock:
            known = [q for q in queues if q in self.queues] or list(self.queues)
            for queue in known:
                # A webhook's new jobs outrank a leadership change (their cooldown skip).
                if self.triggered.get(queue) != "webhook":
                    self.triggered[queue] = source

    @property
    def has_triggers(self) -> bool:
        """Whether any trigger waits (ready now or not)."""
        with self._lock:
            return bool(self.triggered)

    def ready_triggers(self, now: float, among: Iterable[str] | None = None) -> dict[str, str]:
        """Take the triggered queues whose last triggered cycle is ``TRIGGER_GAP`` ago.

        Returns each such queue with what triggered it; the others stay pending
        (:meth:`pending_trigger_at` says when they are ready).
        """
        with self._lock:
            pending = {q: s for q, s in self.triggered.items() if among is None or q in set(among)}
            ready = {
                q: s
                for q, s in pending.items()
                if now - self.last_triggered.get(q, -1e18) >= TRIGGER_GAP - _EPSILON
            }
            for queue in ready:
                del self.triggered[queue]
                self.last_triggered[queue] = now
            return ready

    def pending_trigger_at(self, among: Iterable[str] | None = None) -> float | None:
        """When the earliest pending trigger becomes ready, if any is pending."""
        wanted = None if among is None else set(among)
        with self._lock:
            times = [
                self.last_triggered.get(q, -1e18) + TRIGGER_GAP
                for q in self.triggered
                if wanted is None or q in wanted
            ]
            return min(times) if times else None

    # ----------------------------------------------------------------------- both

    def wake_at(self, now: float, among: Iterable[str] | None = None) -> float:
        """When something is next due: a poll, a recheck, a retry or a pending trigger."""
        with self._lock:
            names = self.queues if among is None else [q for q in self.queues if q in among]
            wake = min((self.next_due[q] for q in names), default=now + 1.0)
            pending = self.pending_trigger_at(among)
            return wake if pending is None else min(wake, pending)

"""When each queue is looked at: the dispatcher's timing decisions, pure and clock-driven.

No I/O, no threads and no clock of its own: every method takes ``now``.  The loop
(:mod:`.cycle`) asks it which queues are due and when to wake, and tells it what each
cycle found; ``bench/lib/sim.py`` drives this same object on a virtual clock, so the
simulator's timing is the loop's, not a model of it.

* **Polls**: a queue is next due one poll interval (or Buildkite's longer poll-duration
  hint) after the *start* of the cycle that served it, so queues polled together stay
  together; a cycle takes every queue due within :data:`ALIGN_WINDOW`.
* **Rechecks**: a queue held by its cooldown is looked at again within
  :data:`COOLDOWN_RECHECK`; one whose scheduled jobs were left to agents that are not busy
  within :data:`PICKUP_RECHECK`.
* **Webhooks**: a delivery naming queues triggers a cycle for them, at most one per queue
  per :data:`TRIGGER_GAP` (a burst for one queue is one cycle; other queues do not wait).
* **Faults**: a queue whose cycle failed is retried with exponential backoff (full jitter,
  at least the server's Retry-After).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from stackgen.buildkite import Backoff
from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.planner import Demand, Plan

#: Webhook-triggered cycles run at most this often per queue.
TRIGGER_GAP = 0.5
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
        self.backoff: dict[str, Backoff] = {q: backoff() for q in self.queues}
        self.triggered: set[str] = set()
        self.trigger_all = False
        self.last_triggered: dict[str, float] = {}

    # ---------------------------------------------------------------------- polls

    def due(self, now: float) -> list[str]:
        """The queues a poll cycle at ``now`` serves (those due within the align window)."""
        return [q for q in self.queues if now >= self.next_due[q] - ALIGN_WINDOW]

    def any_due(self, now: float) -> bool:
        """Whether a poll cycle is due at ``now``."""
        return any(now >= due - _EPSILON for due in self.next_due.values())

    def polled(self, queue: str, started: float, hint: float | None = None) -> None:
        """The queue's demand was read in the cycle that started at ``started``."""
        interval = self.queues[queue].dispatch.poll_interval_seconds
        self.next_due[queue] = started + max(interval, hint or 0.0)
        self.backoff[queue].reset()

    def planned(self, queue: DispatchedQueue, demand: Demand, plan: Plan, now: float) -> None:
        """A plan was made: look again soon if it waits on a cooldown or on a pickup."""
        if plan.cooldown:
            self._recheck(queue.name, now + COOLDOWN_RECHECK)
        elif expects_pickup(queue, demand, plan):
            self._recheck(queue.name, now + PICKUP_RECHECK)

    def failed(self, queue: str, now: float, retry_after: float | None = None) -> None:
        """A call for the queue failed: retry it after a backoff."""
        delay = self.backoff[queue].next_delay(retry_after)
        self.next_due[queue] = now + max(delay, MIN_RETRY)

    def _recheck(self, queue: str, at: float) -> None:
        self.next_due[queue] = min(self.next_due[queue], at)

    # ------------------------------------------------------------------- triggers

    def trigger(self, queues: Iterable[str] = ()) -> None:
        """A webhook named these queues (all queues when it named none we serve)."""
        known = [q for q in queues if q in self.queues]
        if known:
            self.triggered.update(known)
        else:
            self.trigger_all = True

    @property
    def has_triggers(self) -> bool:
        """Whether any trigger waits (ready now or not)."""
        return bool(self.triggered) or self.trigger_all

    def ready_triggers(self, now: float) -> set[str]:
        """Take the triggered queues whose last triggered cycle is ``TRIGGER_GAP`` ago.

        The others stay pending (:meth:`pending_trigger_at` says when they are ready).
        """
        pending = set(self.queues) if self.trigger_all else set(self.triggered)
        ready = {
            q for q in pending if now - self.last_triggered.get(q, -1e18) >= TRIGGER_GAP - _EPSILON
        }
        self.triggered = pending - ready
        self.trigger_all = False
        for queue in ready:
            self.last_triggered[queue] = now
        return ready

    def pending_trigger_at(self) -> float | None:
        """When the earliest pending trigger becomes ready, if any is pending."""
        pending = set(self.queues) if self.trigger_all else self.triggered
        times = [self.last_triggered.get(q, -1e18) + TRIGGER_GAP for q in pending]
        return min(times) if times else None

    # ----------------------------------------------------------------------- both

    def wake_at(self, now: float) -> float:
        """When something is next due: a poll, a recheck, a retry or a pending trigger."""
        wake = min(self.next_due.values(), default=now + 1.0)
        pending = self.pending_trigger_at()
        return wake if pending is None else min(wake, pending)

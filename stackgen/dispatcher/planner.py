"""The dispatcher's planning core: pure, no I/O, driven by a clock it is given.

Given what Buildkite says is waiting (per queue), what exists in Kubernetes (our Jobs
and how far their pods got), the queue's limits and the time, decide what to do:
create Jobs, delete Jobs whose pods never start, give up on a Buildkite job.  The
dispatcher's loop, the unit tests and the benchmark all drive this same code.

Supply and demand (dispatch mode)
---------------------------------
Every agent a Job still has to run is *supply*: ``completions - succeeded - failed`` of
each unfinished Job, whether its pods exist yet, are pending, starting, idle or busy.
*Demand* is the queue's runnable jobs: scheduled + running.  An agent that takes a job
moves one job from scheduled to running, so their sum does not change under our feet;
an agent that finishes its job exits (``--disconnect-after-job``) and leaves both sides.
Unmet demand is ``runnable - supply``: agents dispatched but not yet running are counted
once, never twice.

Exact mode
----------
One Job per Buildkite job.  A Buildkite job that already has a Job (the Job's
``stackgen.io/buildkite-job`` label is the record) is never dispatched again; the
Stacks API's reservation guards across restarts and replicas (done by the loop).
Nothing counts as supply unless its Job exists (or was just created and is not listed
yet): jobs the loop reserved but could not start are remembered and planned again,
although Buildkite no longer lists them while they are reserved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from stackgen.common.models import DispatchedQueue
from stackgen.dispatcher.refusals import refusal, refusal_window

#: Job names must stay label-safe (<= 63 characters).
MAX_NAME = 63


@dataclass(frozen=True)
class JobView:
    """One of our Kubernetes Jobs, as the planner needs to see it."""

    name: str
    queue: str
    dispatch_id: str
    created_at: float
    completions: int
    succeeded: int = 0
    failed: int = 0
    #: Pods running and ready.
    ready: int = 0
    finished: bool = False
    buildkite_job: str | None = None
    attempt: int = 1
    warm: bool = False
    #: Why its pods are not running (Unschedulable, ErrImagePull, …), when known.
    waiting_reason: str | None = None

    @property
    def remaining(self) -> int:
        """Agents this Job will still run (supply)."""
        if self.finished:
            return 0
        return max(0, self.completions - self.succeeded - self.failed)

    @property
    def started(self) -> int:
        """Pods that got as far as running (ready now, or already done)."""
        return self.ready + self.succeeded + self.failed


@dataclass(frozen=True)
class WaitingJob:
    """A scheduled Buildkite job (exact mode)."""

    uuid: str
    scheduled_at: float | None = None
    priority: int = 0


@dataclass(frozen=True)
class Demand:
    """What Buildkite says about a queue."""

    scheduled: int = 0
    running: int = 0
    #: Exact mode: scheduled jobs not reserved by anyone, oldest first.
    jobs: tuple[WaitingJob, ...] = ()
    paused: bool = False

    @property
    def runnable(self) -> int:
        """Jobs that need an agent now or hold one."""
        return self.scheduled + self.running


@dataclass(frozen=True)
class Reservation:
    """A Buildkite job this dispatcher reserved and has not made a Job for (yet)."""

    job: WaitingJob
    #: When the reservation lapses (Buildkite lists the job again then).
    until: float


@dataclass
class QueueMemory:
    """What the planner remembers about a queue between cycles (rebuilt after a restart)."""

    last_dispatch_id: str | None = None
    last_dispatch_at: float | None = None
    cooldown_warned_for: str | None = None
    #: Dispatch mode: dispatches in a row whose pods never started.
    stuck_dispatches: int = 0
    #: Exact mode: Buildkite job -> dispatches whose pod never started.
    stuck_attempts: dict[str, int] = field(default_factory=dict)
    #: Exact mode: Buildkite jobs we created Jobs for, until the Job shows up in a listing.
    just_dispatched: dict[str, float] = field(default_factory=dict)
    #: Exact mode: jobs reserved but not started (a call failed between reserving and
    #: creating): Buildkite hides them while reserved, so they are planned from here.
    reserved: dict[str, Reservation] = field(default_factory=dict)
    #: Buildkite jobs given up on (finished with a reason): never dispatched again.
    given_up: set[str] = field(default_factory=set)
    #: Exact mode: Buildkite job -> when the API server first refused its pod (or Job)
    #: for a reason that may pass (a ResourceQuota exceeded); see :func:`refusal`.
    refused: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateJob:
    """Create a Job from the queue's template."""

    queue: str
    name: str
    dispatch_id: str
    parallelism: int
    buildkite_job: str | None = None
    attempt: int = 1
    warm: bool = False
    kind: Literal["create"] = "create"


@dataclass(frozen=True)
class DeleteJob:
    """Delete a Job (and its pods)."""

    queue: str
    name: str
    reason: str
    kind: Literal["delete"] = "delete"
    #: Why: ``not-started`` (its pods never started) or ``canceled`` (on Buildkite).
    cause: str = "not-started"
    #: The Kubernetes reason its pods did not start (FailedCreate, ErrImagePull, ...).
    code: str = ""


@dataclass(frozen=True)
class FailJob:
    """Finish a Buildkite job we cannot start, with the reason (Stacks API finish)."""

    queue: str
    buildkite_job: str
    detail: str
    kind: Literal["fail"] = "fail"


@dataclass(frozen=True)
class NoteJob:
    """Add a line to a Buildkite job's timeline (Stacks API notifications)."""

    queue: str
    buildkite_job: str
    detail: str
    kind: Literal["note"] = "note"


@dataclass(frozen=True)
class WarnQueue:
    """Tell the people waiting on a queue why nothing starts (dispatch mode)."""

    queue: str
    detail: str
    kind: Literal["warn"] = "warn"


Action = CreateJob | DeleteJob | FailJob | NoteJob | WarnQueue


@dataclass
class Plan:
    """The decision for one queue in one cycle."""

    queue: str
    actions: list[Action] = field(default_factory=list)
    #: Facts behind the decision, for the log line of the cycle.
    supply: int = 0
    unmet: int = 0
    cooldown: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def agents_dispatched(self) -> int:
        """Agents the plan's new Jobs will run."""
        return sum(a.parallelism for a in self.actions if isinstance(a, CreateJob))


def job_name(template: str, dispatch_id: str, index: int | None = None) -> str:
    """``<template>-<dispatch id>``, and ``-<n>`` for the n-th Job of an exact-mode cycle.

    Templates are at most 46 characters (stackgen limits queue names), so names stay
    label-safe (63).  The Buildkite job itself is in the Job's labels, not its name.
    """
    name = f"{template}-{dispatch_id}"
    if index is not None:
        name += f"-{index}"
    if len(name) > MAX_NAME:
        raise ValueError(f"Job name {name!r} is longer than {MAX_NAME} characters")
    return name


def _stuck(job: JobView, queue: DispatchedQueue, now: float) -> bool:
    return (
        not job.finished
        and job.started == 0
        and now - job.created_at >= queue.dispatch.pod_start_timeout_seconds
    )


def _stuck_reason(job: JobView, queue: DispatchedQueue) -> str:
    why = job.waiting_reason or "no pod started"
    what = f"pod of Job {job.name}" if queue.dispatch.workload == "job" else f"pod {job.name}"
    return f"{what} did not start within {queue.dispatch.pod_start_timeout_seconds:.0f}s: {why}"


def reason_code(waiting_reason: str | None) -> str:
    """The Kubernetes reason of a waiting reason (``FailedCreate: …`` -> ``FailedCreate``)."""
    if not waiting_reason:
        return "unknown"
    return waiting_reason.split(":", 1)[0].strip() or "unknown"


def _stuck_delete(job: JobView, queue: DispatchedQueue, reason: str) -> DeleteJob:
    return DeleteJob(queue.name, job.name, reason, code=reason_code(job.waiting_reason))


def plan_queue(
    queue: DispatchedQueue,
    demand: Demand,
    jobs: Iterable[JobView],
    memory: QueueMemory,
    now: float,
    dispatch_id: str,
    *,
    announced: bool = False,
) -> Plan:
    """Decide what to do for one queue (mutates ``memory``).

    ``announced``: a webhook just announced new jobs on this queue.  The cooldown holds
    back dispatches while the previous one's agents start; it does not hold back agents
    for jobs Buildkite has just announced, which no earlier dispatch was sized for.
    """
    mine = sorted((j for j in jobs if j.queue == queue.name), key=lambda j: (j.created_at, j.name))
    if queue.mode == "exact":
        return _plan_exact(queue, demand, mine, memory, now, dispatch_id)
    return _plan_dispatch(queue, demand, mine, memory, now, dispatch_id, announced)


def _plan_dispatch(
    queue: DispatchedQueue,
    demand: Demand,
    jobs: list[JobView],
    memory: QueueMemory,
    now: float,
    dispatch_id: str,
    announced: bool = False,
) -> Plan:
    plan = Plan(queue=queue.name)
    live: list[JobView] = []
    stuck_now = False
    for job in jobs:
        if _stuck(job, queue, now):
            reason = _stuck_reason(job, queue)
            plan.actions.append(_stuck_delete(job, queue, reason))
            memory.stuck_dispatches += 1
            stuck_now = True
            if memory.stuck_dispatches >= 2:
                plan.actions.append(WarnQueue(queue.name, reason))
            continue
        live.append(job)
    if not stuck_now and any(j.started > 0 for j in live):
        memory.stuck_dispatches = 0

    plan.supply = sum(j.remaining for j in live)
    plan.unmet = demand.runnable - plan.supply
    if demand.paused:
        plan.notes.append("queue dispatch is paused in Buildkite")
        return plan

    want = plan.unmet + queue.buffer if plan.unmet > 0 else 0
    warm = False
    if want == 0 and plan.supply < queue.min_agents:
        want, warm = queue.min_agents - plan.supply, True
    want = min(want, queue.max_agents - plan.supply)
    if want <= 0:
        if plan.unmet > 0:
            plan.notes.append(f"at maxAgents ({queue.max_agents})")
        return plan

    last = _last_job(live)
    if last is not None and not last.finished:
        needed = math.ceil(queue.dispatch.cooldown_share * last.completions)
        age = now - last.created_at
        if last.started >= needed:
            pass
        elif announced:
            plan.notes.append(
                f"cooldown of {last.dispatch_id} skipped: a webhook announced new jobs"
            )
        elif age < queue.dispatch.cooldown_timeout_seconds:
            plan.cooldown = True
            plan.notes.append(
                f"cooldown: {last.started}/{last.completions} agents of {last.dispatch_id} "
                f"started, waiting for {needed}"
            )
            return plan
        elif memory.cooldown_warned_for != last.dispatch_id:
            memory.cooldown_warned_for = last.dispatch_id
            plan.notes.append(
                f"cooldown timed out after {age:.0f}s with {last.started}/{last.completions} "
                f"agents of {last.dispatch_id} started; dispatching anyway"
            )
    plan.actions.append(
        CreateJob(
            queue=queue.name,
            name=job_name(queue.template, dispatch_id),
            dispatch_id=dispatch_id,
            parallelism=want,
            warm=warm,
        )
    )
    memory.last_dispatch_id = dispatch_id
    memory.last_dispatch_at = now
    return plan


def _last_job(jobs: list[JobView]) -> JobView | None:
    cold = [j for j in jobs if not j.warm]
    return cold[-1] if cold else None


def _plan_exact(
    queue: DispatchedQueue,
    demand: Demand,
    jobs: list[JobView],
    memory: QueueMemory,
    now: float,
    dispatch_id: str,
) -> Plan:
    plan = Plan(queue=queue.name)
    seen = {j.buildkite_job for j in jobs if j.buildkite_job}
    _forget_listed(memory, seen, queue, now)
    live: list[JobView] = []
    retry: list[tuple[str, int]] = []
    for job in jobs:
        if job.buildkite_job and _stuck(job, queue, now):
            reason = _stuck_reason(job, queue)
            plan.actions.append(_stuck_delete(job, queue, reason))
            attempts = memory.stuck_attempts.get(job.buildkite_job, 0) + 1
            memory.stuck_attempts[job.buildkite_job] = attempts
            # A pod refused for good (a webhook, PodSecurity, ...) would be refused again.
            if attempts >= 2 or _refused_for_good(job):
                plan.actions.append(FailJob(queue.name, job.buildkite_job, reason))
                memory.given_up.add(job.buildkite_job)
            else:
                retry.append((job.buildkite_job, job.attempt + 1))
                plan.actions.append(NoteJob(queue.name, job.buildkite_job, f"{reason}; retrying"))
            continue
        live.append(job)
    listed = {j.buildkite_job for j in live if j.buildkite_job}
    # Jobs created but not listed yet count against maxAgents too.
    active = sum(1 for j in live if not j.finished) + len(set(memory.just_dispatched) - listed)
    dispatched = listed | set(memory.just_dispatched)
    plan.supply = active
    waiting = [w for w in _waiting(demand, memory) if w.uuid not in dispatched]
    waiting = [w for w in waiting if w.uuid not in memory.given_up]
    plan.unmet = len(waiting) + len(retry)
    if demand.paused:
        plan.notes.append("queue dispatch is paused in Buildkite")
        return plan
    capacity = queue.max_agents - active
    ordered: list[tuple[str, int]] = retry + [
        (w.uuid, 1) for w in sorted(waiting, key=lambda w: (-w.priority, w.scheduled_at or 0.0))
    ]
    if capacity < len(ordered):
        plan.notes.append(f"at maxAgents ({queue.max_agents}): {len(ordered) - capacity} wait")
    for index, (uuid, attempt) in enumerate(ordered[: max(0, capacity)]):
        plan.actions.append(
            CreateJob(
                queue=queue.name,
                name=job_name(queue.template, dispatch_id, index),
                dispatch_id=dispatch_id,
                parallelism=1,
                buildkite_job=uuid,
                attempt=attempt,
            )
        )
    if any(isinstance(a, CreateJob) for a in plan.actions):
        memory.last_dispatch_id = dispatch_id
        memory.last_dispatch_at = now
    return plan


def _refused_for_good(job: JobView) -> bool:
    """The Job's pods were never created, and for a reason that will not pass."""
    if reason_code(job.waiting_reason) != "FailedCreate":
        return False
    return refusal(job.waiting_reason) == "final"


def _forget_listed(memory: QueueMemory, seen: set[str], queue: DispatchedQueue, now: float) -> None:
    """Forget what a listing now shows, or what has lapsed.

    Jobs we created show up in a listing; until then we remember them ourselves.  A
    remembered reservation ends with its Job, or when it lapses (Buildkite lists the job
    again then, if nobody took it).
    """
    for uuid, at in list(memory.just_dispatched.items()):
        if uuid in seen or now - at > max(60.0, queue.dispatch.pod_start_timeout_seconds):
            del memory.just_dispatched[uuid]
    for uuid, reservation in list(memory.reserved.items()):
        if uuid in seen or uuid in memory.just_dispatched or now >= reservation.until:
            del memory.reserved[uuid]
    for uuid, at in list(memory.refused.items()):
        if uuid in seen or now - at > refusal_window(queue) + 600:  # long gone
            del memory.refused[uuid]


def _waiting(demand: Demand, memory: QueueMemory) -> list[WaitingJob]:
    """The jobs Buildkite lists, and those we reserved but could not start (not listed)."""
    listed = {w.uuid for w in demand.jobs}
    return list(demand.jobs) + [r.job for u, r in memory.reserved.items() if u not in listed]


#: Buildkite job states that end a job no agent ran (or one canceled): an agent that has
#: not started has nothing left to do.  Not ``finished``, ``timing_out`` or ``timed_out``:
#: Buildkite reaches those only through an agent running the job, and in exact mode only
#: the Job's own agent can have run it, so its Job merely has a ``status`` that has not
#: counted the pod yet (a busy Job controller updates it seconds late).  That Job is left
#: to its ``ttlSecondsAfterFinished``.
CANCELED_STATES = frozenset({"canceling", "canceled", "expired", "skipped", "broken"})


def unstarted_exact_jobs(jobs: Iterable[JobView]) -> list[JobView]:
    """Exact-mode Jobs none of whose pods has started: the ones a cancel may concern."""
    return [j for j in jobs if j.buildkite_job and not j.finished and j.started == 0]


def cancelled_jobs(
    queue: DispatchedQueue, jobs: Iterable[JobView], states: dict[str, str]
) -> list[DeleteJob]:
    """Delete the unstarted Jobs of Buildkite jobs canceled (or ended unrun) meanwhile.

    An agent already running its job is told by Buildkite itself (it polls its job's
    state and stops), so only Jobs whose pods have not started are deleted, and never
    for a job Buildkite says ran (:data:`CANCELED_STATES`).
    """
    return [
        DeleteJob(
            queue.name,
            job.name,
            f"Buildkite job {job.buildkite_job} is {states[job.buildkite_job]} before its agent started",
            cause="canceled",
        )
        for job in unstarted_exact_jobs(jobs)
        if job.buildkite_job and states.get(job.buildkite_job) in CANCELED_STATES
    ]


def remember_from_jobs(memory: QueueMemory, jobs: Iterable[JobView]) -> None:
    """After a restart: recover the last dispatch of a queue from its Jobs."""
    newest = max(jobs, key=lambda j: j.created_at, default=None)
    if newest is not None and memory.last_dispatch_id is None:
        memory.last_dispatch_id = newest.dispatch_id
        memory.last_dispatch_at = newest.created_at

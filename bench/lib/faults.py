"""Single faults against the real dispatcher: how long until every job has a Job again.

Each scenario builds a small world (the fake Buildkite over HTTP on 127.0.0.1, the
in-memory Kubernetes of tests/support, the real :class:`stackgen.dispatcher.cycle.Dispatcher`)
on a virtual clock, injects one fault, and drives the dispatcher as its loop would: a
cycle whenever its schedule says a queue is due (``schedule.wake_at``, ``run_cycle``).  It
reports the virtual seconds from the end of the fault to every Buildkite job having a
Kubernetes Job (exact mode: a Job and its token Secret, so its pod can start; dispatch
mode: agents dispatched for every job), and what the dispatcher called meanwhile.

Only the dispatcher's public surface of every version is used (``Dispatcher(...)``,
``run_cycle``, ``schedule.wake_at``), so the same scenarios run against an older
stackgen (``bench/faults --baseline REF``) for a before/after.

One scenario runs in real time: head-of-line blocking (a slow Buildkite answer for one
queue) needs real waits, so it drives ``Dispatcher.run`` on the wall clock.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stackgen.buildkite import AgentAPI
from stackgen.common import logs
from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.cycle import Dispatcher
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube, cronjob_template

START = 1_800_000_000.0
#: Give up measuring after this many virtual seconds past the fault's end.
LIMIT = 900.0
JOBS = 5


class Killed(BaseException):
    """The dispatcher process died (kill -9) mid-cycle: nothing after this runs."""


@dataclass
class World:
    """One scenario's Buildkite, Kubernetes and dispatcher on one virtual clock."""

    clock: VirtualClock
    fake: FakeBuildkite
    kube: FakeKube
    queues: tuple[str, ...]
    dispatcher: Any = None
    apis: list[AgentAPI] = field(default_factory=list)
    ids: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))

    def new_dispatcher(self, **queue_overrides: Any) -> Any:
        """A freshly started dispatcher (empty memory) on this world."""
        data = config_dict(**queue_overrides)
        data["queues"] = [q for q in data["queues"] if q["name"] in self.queues]
        api = AgentAPI(self.fake.endpoint, TOKEN)
        self.apis.append(api)
        ids = self.ids
        self.dispatcher = Dispatcher(
            from_dict(data), api, self.kube, clock=self.clock, new_id=lambda: f"{next(ids):08x}"
        )
        return self.dispatcher

    def exact_served(self, uuids: list[str]) -> bool:
        """Every job has a Job, and every such Job its token Secret."""
        jobs = {
            (j["metadata"].get("labels") or {}).get("stackgen.io/buildkite-job"): name
            for name, j in self.kube.objects["jobs"].items()
        }
        return all(
            u in jobs and f"{jobs[u]}-acquire" in self.kube.objects["secrets"] for u in uuids
        )

    def dispatch_served(self, queue: str, count: int) -> bool:
        """Agents dispatched (Jobs' parallelism) for at least ``count`` jobs."""
        supply = sum(
            int(j["spec"].get("parallelism") or 0)
            for j in self.kube.objects["jobs"].values()
            if (j["metadata"].get("annotations") or {}).get("stackgen.io/queue") == queue
        )
        return supply >= count


@contextlib.contextmanager
def world(queues: tuple[str, ...] = ("deploy",)) -> Iterator[World]:
    """A fake Buildkite serving ``queues`` (templates for each) on a virtual clock."""
    clock = VirtualClock(START)
    with FakeBuildkite(token=TOKEN, queues=("builds", "deploy", "slow"), clock=clock) as fake:
        kube = FakeKube(clock=clock)
        for name in ("builds", "deploy", "slow"):
            kube.add("cronjobs", cronjob_template(f"buildkite-agent-{name}", name))
        w = World(clock, fake, kube, queues)
        try:
            yield w
        finally:
            for api in w.apis:
                api.close()


def step(w: World, events: list[tuple[float, Callable[[], None]]]) -> None:
    """Move the clock to the next thing that happens (a cycle due, or an event), do it."""
    now = w.clock()
    wake = w.dispatcher.schedule.wake_at(now)
    pending = [t for t, _ in events]
    target = min([wake, *pending]) if pending else wake
    if target > now:
        w.clock.set(target)
    for at, action in list(events):
        if at <= w.clock():
            events.remove((at, action))
            action()
    w.dispatcher.run_cycle("poll")
    w.kube.run_job_controller()  # pods start at once: only the dispatcher's delay counts


def drive(
    w: World,
    done: Callable[[], bool],
    *,
    fault_end: Callable[[], float | None],
    events: list[tuple[float, Callable[[], None]]] | None = None,
) -> float | None:
    """Cycle until ``done``; seconds from the fault's end to then (None: not within LIMIT)."""
    events = list(events or [])
    for _ in range(100_000):
        end = fault_end()
        if end is not None and done():
            return max(0.0, w.clock() - end)
        if end is not None and w.clock() - end > LIMIT:
            return None
        step(w, events)
    return None


def _bk_fault_end(w: World, route: str) -> Callable[[], float | None]:
    """When the fake answered the injected fault (its request log, on the virtual clock)."""

    def end() -> float | None:
        hits = [r.timestamp for r in w.fake.requests if r.route == route and r.status >= 400]
        return max(hits) if hits and not w.fake.pending_faults else None

    return end


def _kube_fault_end(w: World, method: str) -> Callable[[], float | None]:
    """When the injected faults of ``method`` were used up (the clock stands still between
    the cycle that used the last one and this check)."""
    seen: dict[str, float] = {}

    def end() -> float | None:
        used = any(m == method for m, _ in w.kube.calls)
        if "at" not in seen and used and not w.kube._faults[method]:
            seen["at"] = w.clock()
        return seen.get("at")

    return end


# ------------------------------------------------------------------------------ scenarios


def buildkite_fault(route: str, kind: str) -> dict[str, Any]:
    """One Buildkite fault on an exact queue's reserve or token call."""
    with world() as w:
        w.new_dispatcher()
        uuids = w.fake.add_jobs("deploy", JOBS)
        w.fake.inject(route, kind, seconds=1 if kind == "429" else None)
        took = drive(w, lambda: w.exact_served(uuids), fault_end=_bk_fault_end(w, route))
        return {"seconds": took}


def kube_create_fault(status: int | None, retry_after: float | None, mode: str) -> dict[str, Any]:
    """One failed Job create (a 429 with Retry-After, a 500, a timeout)."""
    queue = "deploy" if mode == "exact" else "builds"
    with world((queue,)) as w:
        w.new_dispatcher()
        uuids = w.fake.add_jobs(queue, JOBS)
        w.kube.fail("create_job", status, retry_after=retry_after)

        def done() -> bool:
            return w.exact_served(uuids) if mode == "exact" else w.dispatch_served(queue, JOBS)

        return {"seconds": drive(w, done, fault_end=_kube_fault_end(w, "create_job"))}


def lost_create(mode: str) -> dict[str, Any]:
    """A Job create lands but its answer is lost (the Job exists; did its Secret follow?)."""
    queue = "deploy" if mode == "exact" else "builds"
    with world((queue,)) as w:
        w.new_dispatcher()
        uuids = w.fake.add_jobs(queue, 1)
        w.kube.lose_response("create_job")

        def done() -> bool:
            return w.exact_served(uuids) if mode == "exact" else w.dispatch_served(queue, 1)

        took = drive(w, done, fault_end=_kube_fault_end(w, "create_job"))
        jobs = len(w.kube.objects["jobs"])
        return {"seconds": took, "jobs_for_1": jobs}


def template_missing(mode: str, outage: float = 10.0) -> dict[str, Any]:
    """The queue's template CronJob is missing for ``outage`` seconds while jobs wait."""
    queue = "deploy" if mode == "exact" else "builds"
    with world((queue,)) as w:
        w.new_dispatcher()
        template = w.kube.objects["cronjobs"].pop(f"buildkite-agent-{queue}")
        uuids = w.fake.add_jobs(queue, JOBS)
        back = w.clock() + outage
        calls_before = len(w.fake.requests)

        def restore() -> None:
            w.kube.objects["cronjobs"][template["metadata"]["name"]] = template
            counts["buildkite_calls"] = len(w.fake.requests) - calls_before
            counts["template_reads"] = sum(1 for m, _ in w.kube.calls if m == "get_cronjob")

        counts: dict[str, Any] = {}

        def done() -> bool:
            return w.exact_served(uuids) if mode == "exact" else w.dispatch_served(queue, JOBS)

        took = drive(
            w,
            done,
            fault_end=lambda: back if w.clock() >= back else None,
            events=[(back, restore)],
        )
        return {"seconds": took, "outage_s": outage, **counts}


def kill_between_reserve_and_create() -> dict[str, Any]:
    """kill -9 after the jobs were reserved, before their Jobs: a new process takes over."""
    with world() as w:
        first = w.new_dispatcher()
        uuids = w.fake.add_jobs("deploy", JOBS)
        create = w.kube.create_job
        died: dict[str, float] = {}

        def die(body: dict[str, Any]) -> dict[str, Any]:
            died.setdefault("at", w.clock())
            raise Killed

        w.kube.create_job = die  # type: ignore[method-assign]
        with contextlib.suppress(Killed):
            first.run_cycle("poll")
        w.kube.create_job = create  # type: ignore[method-assign]
        w.new_dispatcher()  # the restarted process (or the new leader): empty memory
        took = drive(w, lambda: w.exact_served(uuids), fault_end=lambda: died.get("at"))
        return {"seconds": took, "reserved_at_kill": bool(died)}


def kube_keeps_failing(seconds: float = 60.0) -> dict[str, Any]:
    """Every Job create fails for a minute: how often it retries, and calls Buildkite."""
    with world(("builds",)) as w:
        w.new_dispatcher()
        w.fake.add_jobs("builds", JOBS)
        w.kube.fail("create_job", 500, times=100_000)
        start = w.clock()
        calls = len(w.fake.requests)
        while w.clock() - start < seconds:
            step(w, [])
        creates = sum(1 for m, _ in w.kube.calls if m == "create_job")
        return {
            "create_attempts": creates,
            "buildkite_calls": len(w.fake.requests) - calls,
            "window_s": seconds,
        }


# ------------------------------------------------------------------------ in real time


def head_of_line(slow_seconds: float = 6.0, jobs: int = 4) -> dict[str, Any]:
    """One queue's scheduled-jobs list answers after ``slow_seconds``: does another wait?

    Real time: ``Dispatcher.run`` on the wall clock, 2 s polls.  A healthy exact queue
    gets a job every 3 s; each one's time from being added to having a Job is reported.
    """
    with FakeBuildkite(token=TOKEN, queues=("builds", "deploy", "slow")) as fake:
        kube = FakeKube()
        for name in ("deploy", "slow"):
            kube.add("cronjobs", cronjob_template(f"buildkite-agent-{name}", name))
        data = config_dict(pollIntervalSeconds=2)
        exact = dict(data["queues"][1], pollIntervalSeconds=2)
        data["queues"] = [exact, dict(exact, name="slow", template="buildkite-agent-slow")]
        api = AgentAPI(fake.endpoint, TOKEN)
        dispatcher = Dispatcher(from_dict(data), api, kube)
        fake.inject(
            "/v3/stacks/stackgen-buildkite-test-slow/scheduled-jobs",
            "slow",
            times=1000,
            seconds=slow_seconds,
        )
        stop = threading.Event()
        thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
        thread.start()
        waits: list[float] = []
        try:
            time.sleep(slow_seconds / 2)
            for _ in range(jobs):
                (uuid,) = fake.add_jobs("deploy", 1)
                added = time.monotonic()
                while not any(
                    (j["metadata"].get("labels") or {}).get("stackgen.io/buildkite-job") == uuid
                    for j in list(kube.objects["jobs"].values())
                ):
                    if time.monotonic() - added > 60:
                        break
                    time.sleep(0.05)
                waits.append(round(time.monotonic() - added, 2))
                time.sleep(3)
        finally:
            stop.set()
            fake.clear_faults()
            thread.join(slow_seconds + 15)
            api.close()
        return {"slow_s": slow_seconds, "healthy_waits_s": waits, "max_wait_s": max(waits)}


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "exact: 429 on batch-reserve": lambda: buildkite_fault("batch_reserve", "429"),
    "exact: 500 on job-acquisition-tokens": lambda: buildkite_fault(
        "job_acquisition_tokens", "500"
    ),
    "exact: Kubernetes 429 (Retry-After 5) on Job create": lambda: kube_create_fault(
        429, 5.0, "exact"
    ),
    "exact: Kubernetes 500 on Job create": lambda: kube_create_fault(500, None, "exact"),
    "exact: Kubernetes timeout on Job create": lambda: kube_create_fault(None, None, "exact"),
    "exact: lost answer to a Job create": lambda: lost_create("exact"),
    "exact: template CronJob missing 10 s": lambda: template_missing("exact"),
    "exact: kill -9 between reserve and create": kill_between_reserve_and_create,
    "dispatch: Kubernetes 429 (Retry-After 5) on Job create": lambda: kube_create_fault(
        429, 5.0, "dispatch"
    ),
    "dispatch: template CronJob missing 10 s": lambda: template_missing("dispatch"),
    "dispatch: template CronJob missing 40 s (calls)": lambda: template_missing("dispatch", 40.0),
    "dispatch: Job creates fail for 60 s (retries)": kube_keeps_failing,
}

REALTIME: dict[str, Callable[[], dict[str, Any]]] = {
    "exact: another queue's list answers in 6 s (real time)": head_of_line,
}


def run_all(realtime: bool = True) -> dict[str, dict[str, Any]]:
    """Every scenario (and the real-time ones unless told not to), by name."""
    logs.configure("critical", stream=io.StringIO())  # the figures are the output
    results: dict[str, dict[str, Any]] = {}
    chosen = {**SCENARIOS, **(REALTIME if realtime else {})}
    for name, scenario in chosen.items():
        started = time.monotonic()
        try:
            results[name] = scenario()
        except Exception as exc:  # a scenario the code under test cannot run at all
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["bench_s"] = round(time.monotonic() - started, 1)
    return results

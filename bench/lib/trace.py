"""A seeded, bursty Buildkite workload: monorepo builds fanning out over a working day.

The trace is open-loop: every job has a fixed scheduled time and run time, whatever
serves it, so the simulator (bench/lib/sim.py) and an end-to-end replay on a real
cluster see exactly the same work.  ``Trace.save``/``Trace.load`` keep it as JSON.

Distributions (all drawn from one ``random.Random(seed)``; :func:`describe` prints them):

* Builds arrive as a non-homogeneous Poisson process (thinning) with rate
  ``peak_builds_per_hour * profile(t)``; ``profile`` is 0.05 at night, ramps up 08:00-09:00,
  is 1.0 09:00-12:00 and 13:00-17:00, 0.6 over lunch, ramps down 17:00-19:00.
* A build has 1 wave (50 %), 2 (35 %) or 3 (15 %).  Wave 1 fans out
  ``round(logUniform(20, 200))`` jobs at once; later waves ``round(logUniform(5, 60))`` jobs,
  each wave ``lognormal(median 6 min, sigma 0.5)`` after the previous one.
* Each job goes to a queue by the queue weights below, and runs
  ``lognormal(median = the queue's median, sigma 0.7)``, clipped to [10 s, 1 h].
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOUR = 3600.0


@dataclass(frozen=True)
class QueueProfile:
    """A queue of the trace: its share of jobs and its typical job run time."""

    name: str
    weight: float
    median_duration: float


DEFAULT_QUEUES: tuple[QueueProfile, ...] = (
    QueueProfile("lint-unit", 0.40, 90.0),
    QueueProfile("build-large", 0.20, 360.0),
    QueueProfile("test-shards", 0.25, 240.0),
    QueueProfile("docker", 0.10, 300.0),
    QueueProfile("deploy", 0.05, 120.0),
)


@dataclass(frozen=True)
class TraceJob:
    """One Buildkite job: when it is scheduled, where, and how long it runs."""

    id: str
    queue: str
    scheduled_at: float
    duration: float
    build: int
    wave: int


@dataclass(frozen=True)
class TraceParams:
    """What the trace is drawn from (seconds since the day's midnight)."""

    seed: int = 20240611
    start: float = 7 * HOUR
    end: float = 20 * HOUR
    peak_builds_per_hour: float = 12.0
    wave1_jobs: tuple[int, int] = (20, 200)
    later_wave_jobs: tuple[int, int] = (5, 60)
    wave_weights: tuple[float, float, float] = (0.50, 0.35, 0.15)
    wave_gap_median: float = 360.0
    wave_gap_sigma: float = 0.5
    duration_sigma: float = 0.7
    duration_bounds: tuple[float, float] = (10.0, HOUR)
    queues: tuple[QueueProfile, ...] = DEFAULT_QUEUES


@dataclass
class Trace:
    """The jobs of a day, ordered by scheduled time."""

    params: TraceParams
    jobs: list[TraceJob] = field(default_factory=list)

    @property
    def queues(self) -> list[str]:
        return [q.name for q in self.params.queues]

    def save(self, path: Path) -> None:
        data = {"params": _params_json(self.params), "jobs": [asdict(j) for j in self.jobs]}
        path.write_text(json.dumps(data, separators=(",", ":")))

    @classmethod
    def load(cls, path: Path) -> Trace:
        data = json.loads(path.read_text())
        params = data["params"]
        params["queues"] = tuple(QueueProfile(**q) for q in params["queues"])
        for key in ("wave1_jobs", "later_wave_jobs", "wave_weights", "duration_bounds"):
            params[key] = tuple(params[key])
        return cls(TraceParams(**params), [TraceJob(**j) for j in data["jobs"]])

    def window(self, start: float, end: float, rebase: bool = True) -> Trace:
        """The jobs scheduled in [start, end) (a smaller trace for a real cluster)."""
        jobs = [j for j in self.jobs if start <= j.scheduled_at < end]
        if rebase:
            jobs = [
                TraceJob(j.id, j.queue, j.scheduled_at - start, j.duration, j.build, j.wave)
                for j in jobs
            ]
        return Trace(self.params, jobs)


def _params_json(p: TraceParams) -> dict[str, object]:
    data = asdict(p)
    data["queues"] = [asdict(q) for q in p.queues]
    return data


def profile(t: float) -> float:
    """Share of the peak build rate at ``t`` seconds after midnight."""
    h = (t / HOUR) % 24
    night = 0.05
    if h < 8 or h >= 19:
        return night
    if h < 9:
        return night + (1 - night) * (h - 8)
    if 12 <= h < 13:
        return 0.6
    if h < 17:
        return 1.0
    return 1.0 - (1 - night) * (h - 17) / 2


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def _pick(rng: random.Random, weights: Sequence[float]) -> int:
    x = rng.random() * sum(weights)
    for i, w in enumerate(weights):
        x -= w
        if x < 0:
            return i
    return len(weights) - 1


def generate(params: TraceParams | None = None) -> Trace:
    """Draw the day's jobs."""
    p = params or TraceParams()
    rng = random.Random(p.seed)
    weights = [q.weight for q in p.queues]
    jobs: list[TraceJob] = []
    t = p.start
    build = 0
    peak = p.peak_builds_per_hour / HOUR
    while True:
        t += rng.expovariate(peak)  # thinning: candidate arrivals at the peak rate
        if t >= p.end:
            break
        if rng.random() > profile(t):
            continue
        build += 1
        waves = 1 + _pick(rng, p.wave_weights)
        at = t
        for wave in range(1, waves + 1):
            if wave > 1:
                at += rng.lognormvariate(math.log(p.wave_gap_median), p.wave_gap_sigma)
            lo, hi = p.wave1_jobs if wave == 1 else p.later_wave_jobs
            count = round(_log_uniform(rng, lo, hi))
            for index in range(count):
                queue = p.queues[_pick(rng, weights)]
                duration = rng.lognormvariate(math.log(queue.median_duration), p.duration_sigma)
                duration = min(max(duration, p.duration_bounds[0]), p.duration_bounds[1])
                jobs.append(
                    TraceJob(
                        id=f"b{build:04d}-w{wave}-{index:03d}",
                        queue=queue.name,
                        # A fan-out lands within a second (Buildkite creates the jobs).
                        scheduled_at=round(at + rng.uniform(0, 1.0), 3),
                        duration=round(duration, 3),
                        build=build,
                        wave=wave,
                    )
                )
    jobs.sort(key=lambda j: (j.scheduled_at, j.id))
    return Trace(p, jobs)


def describe(trace: Trace) -> str:
    """The distributions and what was drawn, for the benchmark's output."""
    p = trace.params
    lines = [
        f"trace: seed {p.seed}, {_clock(p.start)}-{_clock(p.end)} simulated, "
        f"{len({j.build for j in trace.jobs})} builds, {len(trace.jobs)} jobs",
        f"  build arrivals: Poisson, {p.peak_builds_per_hour:g}/h at peak x day profile "
        "(0.05 night, ramp 08-09, 1.0 09-12 and 13-17, 0.6 lunch, ramp down 17-19)",
        f"  waves per build: 1/2/3 with p={p.wave_weights[0]:g}/{p.wave_weights[1]:g}/"
        f"{p.wave_weights[2]:g}; wave 1 fans out logUniform({p.wave1_jobs[0]}, {p.wave1_jobs[1]}) "
        f"jobs at once, later waves logUniform({p.later_wave_jobs[0]}, {p.later_wave_jobs[1]}), "
        f"gap lognormal(median {p.wave_gap_median:g} s, sigma {p.wave_gap_sigma:g})",
        f"  job run time: lognormal(median per queue, sigma {p.duration_sigma:g}), clipped to "
        f"[{p.duration_bounds[0]:g} s, {p.duration_bounds[1]:g} s]",
    ]
    for q in p.queues:
        n = sum(1 for j in trace.jobs if j.queue == q.name)
        lines.append(
            f"    {q.name:<12} weight {q.weight:.2f}  median {q.median_duration:>4.0f} s  -> {n} jobs"
        )
    return "\n".join(lines)


def _clock(t: float) -> str:
    return f"{int(t // HOUR):02d}:{int(t % HOUR // 60):02d}"

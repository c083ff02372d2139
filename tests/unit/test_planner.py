"""The planning core, table-driven, with a virtual clock: cooldown, bounds, duplicates,
stuck pods and restarts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stackgen.common.models import DispatchedQueue, DispatchSettings
from stackgen.dispatcher.planner import (
    CreateJob,
    DeleteJob,
    Demand,
    FailJob,
    JobView,
    NoteJob,
    QueueMemory,
    Reservation,
    WaitingJob,
    WarnQueue,
    cancelled_jobs,
    job_name,
    plan_queue,
    remember_from_jobs,
)

DISPATCH = DispatchedQueue(
    name="builds",
    mode="dispatch",
    template="buildkite-agent-builds",
    min_agents=0,
    max_agents=20,
    buffer=2,
    dispatch=DispatchSettings(
        poll_interval_seconds=5,
        cooldown_share=0.5,
        cooldown_timeout_seconds=120,
        active_deadline_seconds=3600,
        ttl_seconds_after_finished=300,
        pod_start_timeout_seconds=300,
    ),
)
EXACT = replace(
    DISPATCH, name="deploy", mode="exact", template="buildkite-agent-deploy", buffer=0, max_agents=3
)
NOW = 10_000.0


def job(**kw: object) -> JobView:
    base: dict[str, object] = {
        "name": "buildkite-agent-builds-aaaa0001",
        "queue": "builds",
        "dispatch_id": "aaaa0001",
        "created_at": NOW - 10,
        "completions": 3,
    }
    base.update(kw)
    return JobView(**base)  # type: ignore[arg-type]


def creates(plan_actions: list[object]) -> list[CreateJob]:
    return [a for a in plan_actions if isinstance(a, CreateJob)]


@pytest.mark.parametrize(
    ("case", "demand", "jobs", "expected_parallelism", "note"),
    [
        ("idle queue", Demand(), [], None, None),
        ("burst: unmet + buffer", Demand(scheduled=5), [], 7, None),
        ("running jobs hold their agents", Demand(scheduled=5, running=3), [job(ready=3)], 7, None),
        (
            "dispatched but pending agents are supply (no double count)",
            Demand(scheduled=3),
            [job(completions=3, ready=2, created_at=NOW - 400)],
            None,
            None,
        ),
        ("bounded by maxAgents", Demand(scheduled=50), [], 20, None),
        (
            "at maxAgents: nothing more",
            Demand(scheduled=50),
            [job(completions=20, ready=20)],
            None,
            "at maxAgents (20)",
        ),
        (
            "cooldown: previous dispatch not half started",
            Demand(scheduled=20),
            [job(completions=6, ready=2)],
            None,
            "cooldown: 2/6 agents",
        ),
        (
            "cooldown over once half started",
            Demand(scheduled=20),
            [job(completions=6, ready=3)],
            14,
            None,
        ),
        (
            "cooldown times out",
            Demand(scheduled=20),
            [job(completions=6, ready=1, created_at=NOW - 130)],
            14,
            "cooldown timed out",
        ),
        (
            "finished Jobs are no supply",
            Demand(scheduled=2),
            [job(completions=3, succeeded=3, finished=True)],
            4,
            None,
        ),
        ("paused queue", Demand(scheduled=5, paused=True), [], None, "paused"),
    ],
)
def test_dispatch_mode(
    case: str,
    demand: Demand,
    jobs: list[JobView],
    expected_parallelism: int | None,
    note: str | None,
) -> None:
    plan = plan_queue(DISPATCH, demand, jobs, QueueMemory(), NOW, "bbbb0002")
    made = creates(plan.actions)
    if expected_parallelism is None:
        assert made == [], case
    else:
        assert [c.parallelism for c in made] == [expected_parallelism], case
        assert made[0].name == "buildkite-agent-builds-bbbb0002"
        assert made[0].dispatch_id == "bbbb0002"
    if note:
        assert any(note in n for n in plan.notes), (case, plan.notes)


def test_unmet_never_counts_an_agent_twice_over_a_burst() -> None:
    """Replaying a burst cycle by cycle: total dispatched = jobs + one buffer per dispatch."""
    memory = QueueMemory()
    jobs: list[JobView] = []
    now = NOW
    created = 0
    for cycle in range(6):
        plan = plan_queue(DISPATCH, Demand(scheduled=10), jobs, memory, now, f"c{cycle:07d}")
        for action in creates(plan.actions):
            created += action.parallelism
            jobs.append(
                job(
                    name=action.name,
                    dispatch_id=action.dispatch_id,
                    created_at=now,
                    completions=action.parallelism,
                )
            )
        # pods start gradually
        jobs = [replace(j, ready=min(j.completions, j.ready + 2)) for j in jobs]
        now += 5
    assert created == 12  # 10 jobs + buffer 2, dispatched once


def test_min_agents_makes_warm_agents_without_demand() -> None:
    queue = replace(DISPATCH, min_agents=2)
    plan = plan_queue(queue, Demand(), [], QueueMemory(), NOW, "cccc0003")
    (made,) = creates(plan.actions)
    assert made.parallelism == 2 and made.warm
    plan = plan_queue(queue, Demand(), [job(completions=2, warm=True)], QueueMemory(), NOW, "x")
    assert creates(plan.actions) == []


def test_stuck_dispatch_is_deleted_redispatched_and_then_warned() -> None:
    memory = QueueMemory()
    stuck = job(completions=4, created_at=NOW - 301, waiting_reason="Unschedulable: 0/3 nodes")
    plan = plan_queue(DISPATCH, Demand(scheduled=4), [stuck], memory, NOW, "dddd0004")
    kinds = [type(a) for a in plan.actions]
    assert kinds == [DeleteJob, CreateJob]
    assert "Unschedulable: 0/3 nodes" in plan.actions[0].reason  # type: ignore[union-attr]
    again = replace(stuck, name="n2", dispatch_id="dddd0004", created_at=NOW)
    plan = plan_queue(DISPATCH, Demand(scheduled=4), [again], memory, NOW + 301, "eeee0005")
    assert [type(a) for a in plan.actions] == [DeleteJob, WarnQueue, CreateJob]


def test_exact_mode_one_job_per_buildkite_job_never_twice() -> None:
    memory = QueueMemory()
    waiting = tuple(
        WaitingJob(f"0000000{i}-aaaa-bbbb-cccc-dddddddddddd", NOW - 10 + i) for i in range(5)
    )
    plan = plan_queue(EXACT, Demand(jobs=waiting), [], memory, NOW, "ffff0006")
    made = creates(plan.actions)
    assert [c.buildkite_job for c in made] == [
        w.uuid for w in waiting[:3]
    ]  # maxAgents 3, oldest first
    assert all(c.parallelism == 1 for c in made)
    assert len({c.name for c in made}) == 3
    # The loop records the Jobs it created.  Next cycle: they are not listed yet,
    # Buildkite still lists the jobs (no reservation seen): memory alone prevents a
    # second dispatch.
    for c in made:
        memory.just_dispatched[c.buildkite_job or ""] = NOW
    plan = plan_queue(EXACT, Demand(jobs=waiting), [], memory, NOW + 1, "ffff0007")
    assert creates(plan.actions) == []  # capacity is 3 - 0 listed... but all 3 remembered
    listed = [
        JobView(
            name=c.name,
            queue="deploy",
            dispatch_id=c.dispatch_id,
            created_at=NOW,
            completions=1,
            buildkite_job=c.buildkite_job,
        )
        for c in made
    ]
    plan = plan_queue(EXACT, Demand(jobs=waiting), listed, memory, NOW + 2, "ffff0008")
    assert creates(plan.actions) == []  # at maxAgents
    done = [replace(j, succeeded=1, finished=True) for j in listed]
    plan = plan_queue(EXACT, Demand(jobs=waiting[3:]), done, memory, NOW + 3, "ffff0009")
    assert [c.buildkite_job for c in creates(plan.actions)] == [w.uuid for w in waiting[3:]]


def test_exact_mode_jobs_whose_creates_failed_are_planned_again() -> None:
    """Nothing counts as supply unless its Job exists: a plan the loop could not carry
    out (a reserve 429, a Kubernetes 500 ...) is made again by the next cycle."""
    memory = QueueMemory()
    waiting = (WaitingJob("33333333-aaaa-bbbb-cccc-dddddddddddd", NOW - 5),)
    first = plan_queue(EXACT, Demand(jobs=waiting), [], memory, NOW, "ffff0001")
    assert [c.buildkite_job for c in creates(first.actions)] == [waiting[0].uuid]
    # The creates failed (nothing recorded); the retry plans the same job, and no
    # phantom agent counts as supply.
    again = plan_queue(EXACT, Demand(jobs=waiting), [], memory, NOW + 1, "ffff0002")
    assert [c.buildkite_job for c in creates(again.actions)] == [waiting[0].uuid]
    assert again.supply == 0 and again.unmet == 1


def test_exact_mode_plans_jobs_it_reserved_although_buildkite_hides_them() -> None:
    """Buildkite omits jobs we reserved from its list: the ones we could not start yet
    (tokens failed, Kubernetes failed) are planned from memory until they lapse."""
    uuid = "44444444-aaaa-bbbb-cccc-dddddddddddd"
    memory = QueueMemory()
    memory.reserved[uuid] = Reservation(WaitingJob(uuid, NOW - 20), until=NOW + 30)
    plan = plan_queue(EXACT, Demand(jobs=()), [], memory, NOW, "ffff0003")
    assert [c.buildkite_job for c in creates(plan.actions)] == [uuid]
    assert plan.unmet == 1
    # Once its Job is listed, the memory is dropped; so it is when it lapses.
    view = JobView("j", "deploy", "ffff0003", NOW, 1, buildkite_job=uuid)
    plan = plan_queue(EXACT, Demand(jobs=()), [view], memory, NOW + 1, "ffff0004")
    assert creates(plan.actions) == [] and memory.reserved == {}
    memory.reserved[uuid] = Reservation(WaitingJob(uuid), until=NOW + 30)
    plan = plan_queue(EXACT, Demand(jobs=()), [], memory, NOW + 31, "ffff0005")
    assert creates(plan.actions) == [] and memory.reserved == {}


def test_cancelled_jobs_are_deleted_only_before_their_pods_start() -> None:
    def view(name: str, uuid: str, **kw: object) -> JobView:
        return JobView(name, "deploy", "d", NOW, 1, buildkite_job=uuid, **kw)  # type: ignore[arg-type]

    views = [
        view("pending", "u1"),
        view("running", "u2", ready=1),
        view("done", "u3", succeeded=1, finished=True),
        view("other", "u4"),
    ]
    states = {"u1": "canceled", "u2": "canceled", "u3": "canceled", "u4": "scheduled"}
    (delete,) = cancelled_jobs(EXACT, views, states)
    assert delete.name == "pending" and delete.cause == "canceled"
    assert "u1 is canceled" in delete.reason


def test_exact_mode_after_restart_uses_job_labels() -> None:
    waiting = (WaitingJob("11111111-aaaa-bbbb-cccc-dddddddddddd"),)
    existing = JobView(
        name="x",
        queue="deploy",
        dispatch_id="a",
        created_at=NOW - 5,
        completions=1,
        buildkite_job=waiting[0].uuid,
    )
    fresh = QueueMemory()  # a new process remembers nothing
    plan = plan_queue(EXACT, Demand(jobs=waiting), [existing], fresh, NOW, "b")
    assert creates(plan.actions) == []


def test_exact_mode_stuck_pod_retried_once_then_failed_on_buildkite() -> None:
    uuid = "22222222-aaaa-bbbb-cccc-dddddddddddd"
    memory = QueueMemory()
    stuck = JobView(
        name="j1",
        queue="deploy",
        dispatch_id="a",
        created_at=NOW - 400,
        completions=1,
        buildkite_job=uuid,
        waiting_reason="ErrImagePull: image not found",
    )
    plan = plan_queue(EXACT, Demand(jobs=()), [stuck], memory, NOW, "b")
    assert [type(a) for a in plan.actions] == [DeleteJob, NoteJob, CreateJob]
    assert plan.actions[0].code == "ErrImagePull"  # type: ignore[union-attr]
    # The job's timeline says why, and that it is tried again.
    assert "ErrImagePull: image not found; retrying" in plan.actions[1].detail  # type: ignore[union-attr]
    assert plan.actions[2].attempt == 2  # type: ignore[union-attr]
    second = replace(stuck, name="j2", created_at=NOW, attempt=2)
    plan = plan_queue(EXACT, Demand(jobs=(WaitingJob(uuid),)), [second], memory, NOW + 400, "c")
    assert [type(a) for a in plan.actions] == [DeleteJob, FailJob]
    assert "ErrImagePull" in plan.actions[1].detail  # type: ignore[union-attr]
    # Never dispatched again, even if Buildkite still lists it for a moment.
    plan = plan_queue(EXACT, Demand(jobs=(WaitingJob(uuid),)), [], memory, NOW + 401, "d")
    assert creates(plan.actions) == []


def test_priority_then_age_order_in_exact_mode() -> None:
    jobs = (
        WaitingJob("a" * 8 + "-0000-0000-0000-000000000000", scheduled_at=1, priority=0),
        WaitingJob("b" * 8 + "-0000-0000-0000-000000000000", scheduled_at=2, priority=5),
        WaitingJob("c" * 8 + "-0000-0000-0000-000000000000", scheduled_at=0, priority=0),
    )
    plan = plan_queue(EXACT, Demand(jobs=jobs), [], QueueMemory(), NOW, "e")
    assert [c.buildkite_job[0] for c in creates(plan.actions)] == ["b", "c", "a"]  # type: ignore[index]


def test_job_names_are_label_safe() -> None:
    long_template = "buildkite-agent-" + "q" * 30
    name = job_name(long_template, "0123abcd", 999)
    assert len(name) <= 63 and name.endswith("-0123abcd-999")
    with pytest.raises(ValueError):
        job_name("x" * 60, "0123abcd")
    assert job_name("buildkite-agent-builds", "0123abcd") == "buildkite-agent-builds-0123abcd"


def test_remember_from_jobs_after_restart() -> None:
    memory = QueueMemory()
    remember_from_jobs(
        memory, [job(dispatch_id="old", created_at=1), job(dispatch_id="new", created_at=2)]
    )
    assert memory.last_dispatch_id == "new" and memory.last_dispatch_at == 2


def test_webhook_announced_jobs_are_not_held_by_the_cooldown() -> None:
    starting = [job(completions=6, ready=1)]
    held = plan_queue(DISPATCH, Demand(scheduled=10), starting, QueueMemory(), NOW, "aaaa1111")
    assert held.cooldown and creates(held.actions) == []
    plan = plan_queue(
        DISPATCH, Demand(scheduled=10), starting, QueueMemory(), NOW, "aaaa1112", announced=True
    )
    assert not plan.cooldown
    assert [c.parallelism for c in creates(plan.actions)] == [6]  # 10 - 6 supply + buffer 2
    assert any("skipped: a webhook announced new jobs" in n for n in plan.notes)

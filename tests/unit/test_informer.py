"""The Job informer: list, then watch; the dispatcher's own writes; relists; and a loop
that reads its cache instead of listing Jobs each cycle."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from stackgen.buildkite import AgentAPI
from stackgen.dispatcher.config import from_dict
from stackgen.dispatcher.cycle import Dispatcher
from stackgen.dispatcher.informer import JobInformer
from stackgen.dispatcher.jobs import LABEL_QUEUE, OUR_JOBS
from stackgen.dispatcher.kube import JSON, KubeError
from tests.support.dispatcher_config import TOKEN, config_dict
from tests.support.fake_buildkite import FakeBuildkite, VirtualClock
from tests.support.fake_kube import FakeKube, cronjob_template


def job(name: str, version: str, **status: Any) -> JSON:
    return {
        "metadata": {"name": name, "resourceVersion": version, "labels": {OUR_JOBS: "x"}},
        "status": status,
    }


class ScriptedKube:
    """Lists and watches that return what a test scripted, in order."""

    def __init__(self) -> None:
        self.lists: list[tuple[list[JSON], str]] = []
        self.watches: list[list[tuple[str, JSON]] | KubeError] = []
        self.watched_from: list[str] = []
        self.during_list: Callable[[], None] | None = None
        self.stop = threading.Event()

    def list_jobs_at(self, selector: str) -> tuple[list[JSON], str]:
        assert selector == OUR_JOBS
        if self.during_list is not None:
            self.during_list()
        return self.lists.pop(0)

    def watch_jobs(
        self, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, JSON]]:
        self.watched_from.append(resource_version)
        if not self.watches:
            self.stop.set()
            return
        script = self.watches.pop(0)
        if isinstance(script, KubeError):
            raise script
        yield from script


def names(informer: JobInformer) -> list[str]:
    return sorted(j["metadata"]["name"] for j in informer.snapshot())


def test_watch_events_keep_the_cache_current() -> None:
    kube = ScriptedKube()
    kube.lists = [([job("a", "5"), job("b", "6")], "6")]
    kube.watches = [
        [
            ("MODIFIED", job("a", "7", active=1, ready=1)),
            ("DELETED", job("b", "8")),
            ("ADDED", job("c", "9")),
            ("BOOKMARK", {"metadata": {"resourceVersion": "12"}}),
        ]
    ]
    informer = JobInformer(kube, OUR_JOBS)
    assert not informer.synced
    informer.run(kube.stop)
    assert informer.synced
    assert names(informer) == ["a", "c"]
    (a,) = (j for j in informer.snapshot() if j["metadata"]["name"] == "a")
    assert a["status"] == {"active": 1, "ready": 1}
    # The list's version first, then the last event's (a bookmark's too).
    assert kube.watched_from == ["6", "12"]


def test_own_writes_survive_a_list_that_was_under_way() -> None:
    kube = ScriptedKube()
    kube.lists = [([job("old", "1")], "1"), ([job("old", "1"), job("gone", "2")], "3")]
    informer = JobInformer(kube, OUR_JOBS)
    informer.relist()

    def meanwhile() -> None:  # the loop creates and deletes while the list is in flight
        informer.upsert(job("new", "4"))
        informer.remove("gone")

    kube.during_list = meanwhile
    informer.relist()
    assert names(informer) == ["new", "old"]
    # Once the watch has delivered an object, a later list is the truth again.
    kube.during_list = None
    kube.lists = [([job("old", "1")], "5")]
    informer._apply("DELETED", job("new", "6"))
    informer.relist()
    assert names(informer) == ["old"]


def test_an_expired_watch_starts_over_from_a_list() -> None:
    kube = ScriptedKube()
    kube.lists = [([job("a", "1")], "1"), ([job("b", "40")], "40")]
    kube.watches = [KubeError("too old resource version", status=410), []]
    informer = JobInformer(kube, OUR_JOBS)
    informer.run(kube.stop)
    assert names(informer) == ["b"]
    assert kube.watched_from == ["1", "40", "40"]
    assert kube.lists == []


class Watchless(FakeKube):
    """The in-memory cluster with a list to start an informer from and a silent watch:
    the cache then knows only the first list and what the dispatcher wrote itself."""

    def list_jobs_at(self, selector: str) -> tuple[list[JSON], str]:
        return self._list("jobs", selector), "1"

    def watch_jobs(
        self, selector: str, resource_version: str, timeout: int
    ) -> Iterator[tuple[str, JSON]]:
        return iter(())


def test_the_loop_reads_the_cache_and_sees_its_own_jobs_at_once() -> None:
    clock = VirtualClock(1_800_000_000.0)
    kube = Watchless(clock=clock)
    kube.add("cronjobs", cronjob_template("buildkite-agent-builds", "builds"))
    kube.add(
        "cronjobs",
        cronjob_template(
            "buildkite-agent-deploy", "deploy", args=["start", "--disconnect-after-job"]
        ),
    )
    informer = JobInformer(kube, OUR_JOBS)
    informer.relist()
    with FakeBuildkite(token=TOKEN, queues=("builds", "deploy"), clock=clock) as buildkite:
        api = AgentAPI(buildkite.endpoint, TOKEN)
        try:
            counter = (f"{n:08x}" for n in range(1, 100))
            dispatcher = Dispatcher(
                from_dict(config_dict()),
                api,
                kube,
                clock=clock,
                new_id=lambda: next(counter),
                informer=informer,
            )
            buildkite.add_jobs("builds", 3)
            buildkite.add_jobs("deploy", 2)
            dispatcher.run_cycle("poll")
            clock.advance(11)
            dispatcher.run_cycle("poll")
        finally:
            api.close()
    assert ("list_jobs", OUR_JOBS) not in kube.calls
    reads = dispatcher.metrics.registry.get_sample_value
    # One read per lane and cycle: builds (the metrics lane) and deploy (its own lane).
    assert reads("stackgen_job_reads_total", {"source": "cache"}) == 4
    queues = sorted(j["metadata"]["labels"][LABEL_QUEUE] for j in kube.objects["jobs"].values())
    assert queues == ["builds", "deploy", "deploy"]  # the second cycle counted them all
    assert sorted(j["metadata"]["name"] for j in informer.snapshot()) == sorted(
        kube.objects["jobs"]
    )

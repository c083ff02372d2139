"""Lanes: the queues that wait for the same Buildkite answer, each cycled on its own.

Every ``dispatch`` queue reads its demand from one metrics call, so they share the
``metrics`` lane; each ``exact`` queue lists its own scheduled jobs, so it is a lane of
its own.  The loop runs each lane's cycle on its own worker thread and never waits for
one: a slow or failing answer for one lane holds back only the queues that wait for it,
never another queue's cycle (head-of-line blocking).

The workers are daemon threads, started per cycle: nothing here outlives the process
or holds up its exit (a ThreadPoolExecutor's threads are joined at interpreter exit,
which an API server that never answers would stall).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from stackgen.common.models import DispatchedQueue

T = TypeVar("T")

#: The lane of every dispatch-mode queue (one metrics call serves them all).
METRICS_LANE = "metrics"


def lane_of(queue: DispatchedQueue) -> str:
    """The lane a queue is cycled in."""
    return METRICS_LANE if queue.mode == "dispatch" else f"exact:{queue.name}"


def lanes_of(queues: Iterable[DispatchedQueue]) -> dict[str, tuple[str, ...]]:
    """Each lane and its queues, in config order."""
    lanes: dict[str, tuple[str, ...]] = {}
    for queue in queues:
        lanes[lane_of(queue)] = (*lanes.get(lane_of(queue), ()), queue.name)
    return lanes


class Raised:
    """What :func:`concurrently` returns for a call that raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def concurrently(
    fn: Callable[..., T], calls: Sequence[tuple[Any, ...]], limit: int
) -> list[T | Raised]:
    """``fn(*args)`` for each ``args``, at most ``limit`` at a time on daemon threads.

    Results come back in order; a call that raised gives :class:`Raised`.  One call (or a
    limit of 1) runs on the calling thread.
    """
    results: list[T | Raised] = [Raised(RuntimeError("not run"))] * len(calls)
    todo = iter(enumerate(calls))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            index, args = item
            try:
                results[index] = fn(*args)
            except BaseException as exc:  # handed to the caller, who decides
                results[index] = Raised(exc)

    workers = min(limit, len(calls))
    if workers <= 1:
        work()
        return results
    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def start(target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
    """Run ``target(*args)`` on a new daemon thread."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread

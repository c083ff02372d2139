"""The Stacks API stacks this dispatcher registers: one per exact queue, made on first use.

Demand (the scheduled-jobs list) and acting (reservations, job-acquisition tokens,
timeline notes, failing a job) both need a queue's stack key; a stack that Buildkite
no longer knows (404) is registered again on next use.
"""

from __future__ import annotations

import contextlib

from stackgen.buildkite import AgentAPI, BuildkiteError
from stackgen.common.models import DispatchedQueue
from stackgen.common.names import queue_slug


class Stacks:
    """The registered stack key and queue key of each exact queue."""

    def __init__(self, api: AgentAPI, stack_key: str, namespace: str) -> None:
        self.api = api
        self.stack_key = stack_key
        self.namespace = namespace
        self.registered: dict[str, tuple[str, str]] = {}

    def key(self, queue: DispatchedQueue) -> tuple[str, str]:
        """(stack key, queue key) of the queue's stack, registering it when needed."""
        if queue.name not in self.registered:
            key = f"{self.stack_key}-{queue_slug(queue.name)}"[:128]
            stack = self.api.register_stack(
                key,
                queue_key=queue.name,
                metadata={
                    "stackgen.io/namespace": self.namespace,
                    "stackgen.io/queue": queue.name,
                },
            )
            self.registered[queue.name] = (stack.key, stack.queue_key)
        return self.registered[queue.name]

    def forget(self, queue: str) -> None:
        """Buildkite answered 404 for the queue's stack: register it again next time."""
        self.registered.pop(queue, None)

    def deregister_all(self) -> None:
        """Tell Buildkite these stacks stopped (on shutdown)."""
        for key, _ in self.registered.values():
            with contextlib.suppress(BuildkiteError):
                self.api.deregister_stack(key)

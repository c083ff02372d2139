"""The route table: every API module of the fake lists its endpoints here.

Each module (``metrics``, ``stacks_api``, ``agent_api``, ``jobs_api``,
``meta_data_api``) ends with ``ROUTES``, a tuple of :class:`~.wire.Route` (method, path
under ``/v3``, name, rate-limit scope, handler).
Serving a new part of Buildkite's API is one module with its ``ROUTES`` and one line in
:data:`API_MODULES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tests.support.fake_buildkite import agent_api, jobs_api, meta_data_api, metrics, stacks_api
from tests.support.fake_buildkite.wire import Route

#: The API modules the fake serves, in matching order.
API_MODULES: Final = (metrics, stacks_api, agent_api, jobs_api, meta_data_api)

ROUTES: Final[tuple[Route, ...]] = tuple(r for module in API_MODULES for r in module.ROUTES)
#: Route names, for ``FakeBuildkite.inject(target=...)``.
ROUTE_NAMES: Final[frozenset[str]] = frozenset(r.name for r in ROUTES)


def match_route(method: str, segments: Sequence[str]) -> tuple[Route, dict[str, str]] | None:
    """The route answering ``method /v3/...`` (``segments``: the decoded path), and its params."""
    if len(segments) < 2 or segments[0] != "v3":
        return None
    rest = list(segments[1:])
    for route in ROUTES:
        params = route.match(method, rest)
        if params is not None:
            return route, params
    return None

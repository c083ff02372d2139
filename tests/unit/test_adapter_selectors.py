"""Label selectors as the HPA sends them (labels.Selector.String() of the metric selector)."""

from __future__ import annotations

import pytest

from stackgen.adapter.selectors import Requirement, SelectorError, parse_selector


def q(name: str) -> dict[str, str]:
    return {"queue": name}


@pytest.mark.parametrize(
    ("text", "yes", "no"),
    [
        ("queue=default", ["default"], ["other", "Default"]),
        ("queue==default", ["default"], ["other"]),
        ("queue!=default", ["other"], ["default"]),
        ("queue in (a,b)", ["a", "b"], ["c"]),
        ("queue in (a, b)", ["a", "b"], ["c"]),
        ("queue notin (a,b)", ["c"], ["a", "b"]),
        ("queue", ["anything"], []),
        ("queue in (a,b),queue!=b", ["a"], ["b", "c"]),
        ("  queue = linux-large  ", ["linux-large"], ["linux"]),
        ("queue in (Linux_Large,x.y)", ["Linux_Large", "x.y"], ["linux_large"]),
    ],
)
def test_matches(text: str, yes: list[str], no: list[str]) -> None:
    selector = parse_selector(text)
    for name in yes:
        assert selector.matches(q(name)), (text, name)
    for name in no:
        assert not selector.matches(q(name)), (text, name)


def test_empty_selector_matches_everything() -> None:
    for text in (None, "", "   "):
        selector = parse_selector(text)
        assert selector.requirements == ()
        assert selector.matches({}) and selector.matches(q("x"))


def test_missing_label_semantics_follow_kubernetes() -> None:
    # `!=` and `notin` are satisfied by a missing label; `=`/`in`/exists are not.
    assert parse_selector("queue!=a").matches({})
    assert parse_selector("queue notin (a)").matches({})
    assert not parse_selector("queue=a").matches({})
    assert not parse_selector("queue").matches({})
    assert parse_selector("!queue").matches({})
    assert not parse_selector("!queue").matches(q("a"))


def test_integer_comparisons() -> None:
    assert parse_selector("tier>2").matches({"tier": "3"})
    assert not parse_selector("tier>2").matches({"tier": "2"})
    assert parse_selector("tier<2").matches({"tier": "1"})
    assert not parse_selector("tier<2").matches({"tier": "x"})
    assert not parse_selector("tier<2").matches({})


def test_match_expressions_as_the_hpa_renders_them() -> None:
    # matchLabels {queue: a} + matchExpressions [{key: queue, operator: In, values: [a, b]},
    # {key: team, operator: DoesNotExist}] -> "queue=a,queue in (a,b),!team"
    selector = parse_selector("queue=a,queue in (a,b),!team")
    assert selector.matches(q("a"))
    assert not selector.matches({"queue": "a", "team": "x"})
    assert not selector.matches(q("b"))


def test_named_values_are_the_positive_queue_names() -> None:
    selector = parse_selector("queue in (b,a),queue!=c,other=d")
    assert selector.named_values("queue") == {"a", "b"}
    assert parse_selector("queue=x").named_values("queue") == {"x"}
    assert parse_selector("queue notin (x)").named_values("queue") == set()


def test_round_trip_string_form() -> None:
    text = "queue in (a,b),queue!=c,team,!gone,tier>2"
    assert str(parse_selector(text)) == text
    assert str(Requirement("queue", "=", ("a",))) == "queue=a"


def test_empty_value_is_allowed() -> None:
    assert parse_selector("queue=").matches({"queue": ""})
    assert parse_selector("queue in (a,)").matches({"queue": ""})


@pytest.mark.parametrize(
    "text",
    [
        "queue in ()",
        "queue in (a",
        "queue in a",
        "queue notin (a b)",
        "queue=a b",
        "queue=a,",
        "queue === a",
        "queue~a",
        "=a",
        "queue=" + "x" * 64,
        "queue=a$b",
        "-queue=a",
        "tier>x",
        ",queue=a",
        "queue in (a,b))",
    ],
)
def test_invalid_selectors_are_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)

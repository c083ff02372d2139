"""bench/e2e's peer rows: the shared columns, the audit-log write counts, the row selection."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.lib import audit, peer, peer_row, replay
from bench.lib.e2e import HARNESS_AGENT, Processes, Seen
from bench.lib.trace import TraceJob

T0 = 1_800_000_000.0


def _event(
    verb: str,
    agent: str,
    resource: str,
    at: float = T0,
    *,
    code: int = 201,
    stage: str = "ResponseComplete",
    subresource: str | None = None,
) -> str:
    stamp = datetime.fromtimestamp(at, UTC)
    ref: dict[str, Any] = {"resource": resource, "namespace": "ns"}
    if subresource:
        ref["subresource"] = subresource
    return json.dumps(
        {
            "kind": "Event",
            "stage": stage,
            "verb": verb,
            "userAgent": agent,
            "objectRef": ref,
            "responseStatus": {"code": code},
            "requestReceivedTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
    )


KCM = "kube-controller-manager/v1.33.0 (linux/amd64) kubernetes/abc/system:serviceaccount:x"
PEER = "agent-stack-k8s-v0.47.0/v0.0.0 (linux/amd64) kubernetes/$Format"
PY = "OpenAPI-Generator/31.0.0/python"


def test_writes_are_counted_by_client_and_only_the_controller_s_count_as_its_own() -> None:
    lines = [
        _event("create", PEER, "jobs"),
        _event("create", PEER, "jobs", code=409),
        _event("update", PEER, "jobs"),
        _event("create", PEER, "jobs", stage="ResponseStarted"),  # the same request again
        _event("get", PEER, "jobs"),  # a read: not a write
        _event("create", KCM, "pods"),
        _event("update", KCM, "jobs", subresource="status"),
        _event("patch", "kwok-controller/v0.8.0", "pods", subresource="status"),
        _event("create", "kwokctl/v0.8.0", "nodes"),
        _event("create", "kubectl/v1.33.0 (linux/amd64)", "secrets"),
        _event("patch", HARNESS_AGENT, "pods"),
        "not json",
        "",
    ]
    w = audit.writes_by_client(lines)
    assert w.controller() == 3
    assert w.controller_clients() == ["agent-stack-k8s-v0.47.0"]
    assert w.by_client["kube-controller-manager"] == 2
    assert w.by_resource["kube-controller-manager"]["update jobs/status"] == 1
    assert w.by_resource["agent-stack-k8s-v0.47.0"] == Counter({"create jobs": 2, "update jobs": 1})
    assert w.failed == Counter({"agent-stack-k8s-v0.47.0": 1})
    # The Python client stackgen's dispatcher uses is a controller like any other.
    assert audit.writes_by_client([_event("create", PY, "secrets")]).controller_clients() == [
        "OpenAPI-Generator"
    ]


def test_writes_before_since_are_left_out(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        "\n".join(
            [
                _event("create", KCM, "configmaps", T0 - 5),  # the cluster's own start-up
                _event("create", KCM, "pods", T0 + 1),
                _event("create", PY, "jobs", T0 - 1),
            ]
        )
    )
    assert audit.read_writes(log).by_client == Counter(
        {"kube-controller-manager": 2, "OpenAPI-Generator": 1}
    )
    assert audit.read_writes(log, since=T0).by_client == Counter({"kube-controller-manager": 1})
    assert audit.read_writes(tmp_path / "missing.log").controller() == 0


def test_the_audit_policy_logs_writes_only(tmp_path: Path) -> None:
    flags = audit.apiserver_flags(tmp_path / "a")
    policy = yaml.safe_load(Path(flags["audit-policy-file"]).read_text())
    assert policy["kind"] == "Policy" and policy["omitStages"] == ["RequestReceived"]
    assert policy["rules"] == [
        {"level": "Metadata", "verbs": list(audit.WRITE_VERBS)},
        {"level": "None"},
    ]
    assert flags["audit-log-path"] == str((tmp_path / "a" / "audit.log").resolve())


def _seen(name: str, at: float, running: float | None = None, job: str = "") -> Seen:
    labels = {replay.JOB_NAME_LABEL: job} if job else {}
    return Seen(name, None, at, None, running_at=running, phase="Running", labels=labels)


def _run(**kw: Any) -> replay.RowRun:
    base: dict[str, Any] = dict(
        row=peer_row.ROWS[0],
        settings=replay.Settings.scaled(10),
        namespace="ns",
        replay_start=T0,
        replay_end=T0 + 10,
        ended=T0 + 20,
        jobs={},
        scheduled={},
        visible={},
        webhook_status=Counter(),
        agents={},
        kube_jobs={},
        pods={},
        metrics={},
        cycles=[],
        buildkite_calls=Counter(),
        buildkite_rtt=0.001,
        kube_rtt=0.001,
        idle_timeout=1.0,
        timed_out=False,
        dispatcher_cpu=1.5,
    )
    base.update(kw)
    return replay.RowRun(**base)


def test_columns_follow_each_job_to_the_pod_that_ran_it_and_its_job(tmp_path: Path) -> None:
    job = TraceJob("t1", "q", 0.0, 5.0, 1, 1)
    agents = {
        "p1": replay.Agent("p1", "q", "u1", T0 + 2, T0 + 2.5, job="u1", started=T0 + 2.6),
        "p2": replay.Agent("p2", "q", "u2", T0 + 3, T0 + 3.5, job="u2", started=T0 + 3.6),
        "spare": replay.Agent("spare", "q", "u1", T0 + 2, T0 + 2.4),  # refused: surplus
    }
    pods = {
        "p1": _seen("p1", T0 + 2, T0 + 2.5, job="k1"),
        "p2": _seen("p2", T0 + 3, T0 + 3.5, job="k2"),
        "spare": _seen("spare", T0 + 2, T0 + 2.4, job="k1"),
    }
    kube_jobs = {"k1": _seen("k1", T0 + 1), "k2": _seen("k2", T0 + 1.5)}
    log = tmp_path / "audit.log"
    log.write_text(
        "\n".join(
            [_event("create", PEER, "jobs", T0 - 2 + i) for i in range(3)]
            + [_event("create", KCM, "pods", T0 - 1), _event("create", KCM, "pods", T0 + 1)]
        )
    )
    run = _run(
        jobs={"u1": job, "u2": job, "u3": job},  # u3 never ran
        scheduled={"u1": T0, "u2": T0 + 1, "u3": T0 + 2},
        agents=agents,
        pods=pods,
        kube_jobs=kube_jobs,
        buildkite_calls=Counter({"list_scheduled_jobs": 4, "get_job": 2}),
    )
    c = peer_row.columns(run, log)
    assert (c["jobs"], c["jobs_started"], c["pods"], c["surplus_pods"]) == (3, 2, 3, 1)
    assert c["to_job"]["n"] == 2 and c["to_job"]["p50"] == pytest.approx(0.75)
    assert c["to_pod"]["max"] == pytest.approx(2.0)
    assert c["to_running"]["max"] == pytest.approx(2.5)
    assert c["k8s_writes_per_job"] == pytest.approx(1.0)  # 3 writes, 3 jobs
    assert c["kcm_writes_per_job"] == pytest.approx(1 / 3)  # only from the replay's start
    assert c["buildkite_calls_per_job"] == pytest.approx(2.0)
    assert c["controller_cpu_s"] == 1.5


def test_ratios_are_stackgen_over_peer_and_say_when_they_mean_nothing() -> None:
    assert peer_row.ratio(1.0, 4.0) == "0.25x"
    assert peer_row.ratio(0, 0) == "="
    assert peer_row.ratio(1, 0) == "inf"
    assert peer_row.ratio(None, 1.0) == "-"
    assert peer_row.ratio(float("nan"), 1.0) == "-"
    summary = {"n": 1, "p50": 1.0, "p95": 2.0, "max": 3.0}
    ours = {
        "to_job": summary,
        "to_pod": summary,
        "to_running": summary,
        "surplus_pods": 0,
        "k8s_writes_per_job": 2.0,
        "kcm_writes_per_job": 3.0,
        "buildkite_calls_per_job": 1.0,
        "controller_cpu_s": 1.0,
    }
    theirs = {**ours, "to_running": {**summary, "p95": 8.0}, "controller_cpu_s": 4.0}
    table = peer_row.ratios([("exact", ours)], [("peer", theirs)])
    line = table.splitlines()[-1]
    assert line.startswith("| exact / peer")
    cells = [c.strip() for c in line.strip("|").split("|")]
    heads = [h.strip() for h in table.splitlines()[0].strip("|").split("|")]
    got = dict(zip(heads, cells, strict=True))
    assert got["pod running p95"] == "0.25x" and got["controller CPU"] == "0.25x"
    assert got["surplus pods"] == "=" and got["Job p50"] == "1.00x"


def test_peer_rows_run_only_with_a_binary(tmp_path: Path) -> None:
    known: dict[str, Any] = {r.key: r for r in replay.ROWS}
    known.update({r.key: r for r in peer_row.ROWS})
    keys, problem = peer_row.select_rows(None, known, None)
    assert problem is None and "peer" not in keys and "exact-webhook" in keys
    binary = tmp_path / "agent-stack-k8s"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    keys, problem = peer_row.select_rows(None, known, binary)
    assert problem is None and keys[-2:] == ["peer", "peer-nocap"]
    _, problem = peer_row.select_rows("exact-poll,peer", known, None)
    assert problem == "rows ['peer'] need --peer-bin PATH (or STACKGEN_PEER_BIN)"
    _, problem = peer_row.select_rows("peer", known, tmp_path / "nope")
    assert problem is not None and "not an executable file" in problem
    _, problem = peer_row.select_rows("exact-poll,pear", known, binary)
    assert problem is not None and problem.startswith("unknown rows ['pear']")
    assert [r.max_in_flight for r in peer_row.ROWS] == [25, 0]


def test_the_controller_runs_with_a_clean_environment(tmp_path: Path) -> None:
    binary = tmp_path / "controller"
    binary.write_text('#!/bin/sh\nenv > "$HOME/env.txt"\necho "$@" > "$HOME/args.txt"\n')
    binary.chmod(0o755)
    procs = Processes(tmp_path / "pids")
    os.environ["QUEUE"] = "not-this-one"
    try:
        c = peer.start_controller(
            procs,
            "controller-lint",
            binary,
            fake_url="http://127.0.0.1:1",
            kubeconfig=tmp_path / "kubeconfig",
            namespace="ns",
            stack_key="peer-lint",
            queue="lint",
            max_in_flight=0,
            out=tmp_path,
        )
        c.proc.wait(10)
    finally:
        del os.environ["QUEUE"]
        procs.stop_all()
    env = dict(
        line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if line
    )
    assert "QUEUE" not in env and env["KUBECONFIG"] == str(tmp_path / "kubeconfig")
    assert (tmp_path / "args.txt").read_text().split() == [
        "--config",
        str(tmp_path / "controller-lint.yaml"),
        "--namespace",
        "ns",
        "--id",
        "peer-lint",
        "--queue",
        "lint",
        "--max-in-flight",
        "0",
        "--log-format",
        "json",
    ]
    config = yaml.safe_load((tmp_path / "controller-lint.yaml").read_text())
    assert config == {"agent-config": {"endpoint": "http://127.0.0.1:1/v3"}}


def test_an_agent_in_a_peer_pod_acquires_the_job_its_label_names() -> None:
    agents = peer_row.PeerAgents(
        "http://127.0.0.1:1", lambda pod, code: None, pickup=(0, 0.2), idle_timeout=1.0
    )
    pod = Seen(
        "buildkite-u1-abc",
        "u1",
        T0,
        None,
        running_at=T0 + 0.1,
        phase="Running",
        labels={peer.UUID_LABEL: "u1"},
    )
    agents.on_pod(pod)
    agents.on_pod(pod)  # a second event for the same pod
    pending = Seen(
        "buildkite-u2-abc", "u2", T0, None, phase="Pending", labels={peer.UUID_LABEL: "u2"}
    )
    agents.on_pod(pending)
    assert list(agents.agents) == ["buildkite-u1-abc"]
    assert agents.agents["buildkite-u1-abc"].exact_job == "u1"
    assert [e[2] for e in agents._events] == ["connect"]

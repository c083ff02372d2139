"""The real buildkite-agent (.tools/bin/buildkite-agent) against the fake Buildkite.

The agent runs as a local process pointed at the fake on 127.0.0.1 (no cluster): it
registers, pings, takes a job, runs its command through its own bootstrap (hooks, plugins,
the command in bash), streams the log and finishes.  What the fake records (agent, times,
exit status, the decoded log) is what Buildkite would show:

- ``--disconnect-after-job`` agents run one job each: exit 0 and exit 3 are recorded with
  their output; the environment hook's output is in the log; the registration token
  (the agent's own env) is nowhere in a job's log, even one that prints its whole env;
- a plugin given as ``BUILDKITE_PLUGINS`` JSON (a local git repository) runs its hook;
- a job with a repository is checked out; the commit and the command's own meta-data
  reach the fake;
- ``--acquire-job UUID`` runs exactly that job (registered with the job-acquisition token
  the Stacks API issued, as exact mode does); another acquire of it, while it runs or
  after it finished, exits 27, the code the agent documents for a rejected acquisition;
- cancelling a running ``sleep`` stops it: the agent sees ``canceling`` and finishes the
  job, which ends ``canceled``;
- the fake as its own process, driven by ``python -m tests.support.fake_buildkite.ctl``
  (``enqueue --wait`` prints the log and exits with the job's status), with a long-lived
  agent taking job after job;
- injected server errors on log chunks and finish are retried by the agent.

Without the agent binary (``bin/setup buildkite-agent``) the tests skip, or fail under
``STACKGEN_E2E_REQUIRED=1``.  Every agent process is stopped by its PID at the end; the
build, hooks and plugins folders are temporary and removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.fake_buildkite import FakeBuildkite, FakeJob, http_request
from tests.support.fake_buildkite.ctl import FakeControl

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT = REPO_ROOT / ".tools" / "bin" / "buildkite-agent"
TOKEN = "bkct_e2e-registration-token-5f0c2b8e91"
HOOK_MARK = "environment-hook-ran-7d41"
#: The agent's exit code for a job acquisition Buildkite rejected (clicommand/agent_start.go).
ACQUISITION_REJECTED = 27


@pytest.fixture(scope="module")
def agent_binary() -> Path:
    if not os.access(AGENT, os.X_OK):
        message = f"missing {AGENT.relative_to(REPO_ROOT)} (run bin/setup buildkite-agent)"
        if os.environ.get("STACKGEN_E2E_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return AGENT


@pytest.fixture
def fake() -> Iterator[FakeBuildkite]:
    with FakeBuildkite(TOKEN, queues=("default", "exact"), ping_interval=1) as bk:
        yield bk


@dataclass
class Agents:
    """Real agent processes started by a test, with their work folders (all temporary)."""

    binary: Path
    endpoint: str
    root: Path
    procs: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    @property
    def hooks(self) -> Path:
        return self.root / "hooks"

    def start(self, *args: str, token: str = TOKEN, queue: str = "default") -> int:
        """Start ``buildkite-agent start ARGS``; returns its index (for :meth:`wait`)."""
        index = len(self.procs)
        log = self.root / f"agent-{index}.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root / "home"),
            "LANG": "C.UTF-8",
            "BUILDKITE_AGENT_TOKEN": token,  # as the stack passes it: env, not argv
            "BUILDKITE_AGENT_CONFIG": str(self.root / "agent.cfg"),
        }
        command = [
            str(self.binary),
            "start",
            "--endpoint",
            self.endpoint,
            "--name",
            f"e2e-{index}",
            "--tags",
            f"queue={queue}",
            "--build-path",
            str(self.root / "builds"),
            "--hooks-path",
            str(self.hooks),
            "--plugins-path",
            str(self.root / "plugins"),
            "--sockets-path",
            str(self.root / "sockets"),
            "--no-color",
            *args,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        return index

    def wait(self, index: int, timeout: float = 90) -> int:
        """The agent's exit code (it must exit by itself within ``timeout``)."""
        proc = self.procs[index][0]
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"agent {index} still running after {timeout}s:\n{self.log(index)}")

    def log(self, index: int) -> str:
        text = self.procs[index][1].read_text(errors="replace")
        return text[-4000:]

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


@pytest.fixture
def agents(agent_binary: Path, fake: FakeBuildkite) -> Iterator[Agents]:
    root = Path(tempfile.mkdtemp(prefix="stackgen-agent-e2e-"))
    try:
        for name in ("hooks", "builds", "plugins", "sockets", "home"):
            (root / name).mkdir()
        (root / "agent.cfg").write_text("")
        hook = root / "hooks" / "environment"
        hook.write_text(f"#!/bin/bash\necho {HOOK_MARK} for $BUILDKITE_JOB_ID\n")
        hook.chmod(0o755)
        running = Agents(agent_binary, fake.endpoint, root)
        try:
            yield running
        finally:
            running.stop_all()
    finally:
        if root.name.startswith("stackgen-agent-e2e-"):
            shutil.rmtree(root, ignore_errors=True)


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def ended(fake: FakeBuildkite, uuid: str, agents: Agents, timeout: float = 90) -> FakeJob:
    try:
        return fake.wait_for_job(uuid, timeout=timeout)
    except TimeoutError as err:
        logs = "\n".join(agents.log(i) for i in range(len(agents.procs)))
        pytest.fail(f"{err}\n{logs}")


# --------------------------------------------------------------------------- tests


def test_disconnect_after_job_agents_run_one_job_each_with_status_and_log(
    fake: FakeBuildkite, agents: Agents
) -> None:
    ok = fake.enqueue("default", "echo out-of-job-ok; env | sort", env={"STEP_ENV": "from-step"})
    failing = fake.enqueue("default", "echo about-to-fail >&2; exit 3")
    first = agents.start("--disconnect-after-job")
    # Without ANSI timestamps the agent reports section header times instead.
    second = agents.start("--disconnect-after-job", "--no-ansi-timestamps")

    jobs = {uuid: ended(fake, uuid, agents) for uuid in (ok, failing)}
    assert agents.wait(first) == 0, agents.log(first)
    assert agents.wait(second) == 0, agents.log(second)

    assert (jobs[ok].state, jobs[ok].exit_status) == ("finished", 0)
    assert (jobs[failing].state, jobs[failing].exit_status) == ("finished", 3)
    ok_log, failing_log = fake.job_log(ok), fake.job_log(failing)
    assert "out-of-job-ok" in ok_log and "STEP_ENV=from-step" in ok_log
    assert f"BUILDKITE_JOB_ID={ok}" in ok_log
    assert "about-to-fail" in failing_log
    for uuid, log in ((ok, ok_log), (failing, failing_log)):
        assert f"{HOOK_MARK} for {uuid}" in log
        assert TOKEN not in log
    # One job per agent, each recorded with its agent and ordered times.
    by_agent = {a["uuid"]: a for a in fake.agents()}
    assert {jobs[ok].agent_uuid, jobs[failing].agent_uuid} == set(by_agent)
    for job in jobs.values():
        agent = by_agent[job.agent_uuid or ""]
        assert agent["jobs"] == [job.uuid] and agent["state"] == "disconnected"
        assert "disconnect-after-job" in agent["features"]
        assert job.accepted_at and job.started_at and job.finished_at
        assert job.accepted_at <= job.started_at <= job.finished_at
        assert job.chunks >= 1 and job.chunks_failed_count == 0
        assert bool(job.header_times) == (job.agent_name == "e2e-1"), job.header_times


def test_a_plugin_from_buildkite_plugins_json_runs(fake: FakeBuildkite, agents: Agents) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    plugin = agents.root / "greeter-buildkite-plugin"
    (plugin / "hooks").mkdir(parents=True)
    hook = plugin / "hooks" / "environment"
    hook.write_text('#!/bin/bash\necho "plugin says $BUILDKITE_PLUGIN_GREETER_GREETING"\n')
    hook.chmod(0o755)
    git = ["git", "-C", str(plugin), "-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "plugin"], check=True)

    uuid = fake.enqueue(
        "default", "echo command-ran", plugins=[{f"{plugin}#main": {"greeting": "hola"}}]
    )
    index = agents.start("--disconnect-after-job")
    job = ended(fake, uuid, agents)
    assert agents.wait(index) == 0
    log = fake.job_log(uuid)
    assert job.exit_status == 0, log
    assert "plugin says hola" in log and "command-ran" in log


def test_a_checkout_records_its_commit_and_jobs_use_meta_data(
    fake: FakeBuildkite, agents: Agents
) -> None:
    """BUILDKITE_REPO set: the agent clones it and records the commit (meta-data)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = agents.root / "repo"
    repo.mkdir()
    (repo / "hello.txt").write_text("checked-out-content\n")
    git = ["git", "-C", str(repo), "-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()

    command = (
        "cat hello.txt; buildkite-agent meta-data set greeting hola; "
        'echo "read back: $(buildkite-agent meta-data get greeting)"'
    )
    uuid = fake.enqueue("default", command, repository=str(repo))
    index = agents.start("--disconnect-after-job")
    job = ended(fake, uuid, agents)
    assert agents.wait(index) == 0
    log = fake.job_log(uuid, plain=True)
    assert job.exit_status == 0, log
    assert "checked-out-content" in log and "read back: hola" in log
    data = fake.meta_data(uuid)
    assert data["greeting"] == "hola"
    assert data["buildkite:git:commit"].startswith(f"commit {head}")


def _acquisition_token(fake: FakeBuildkite, uuid: str) -> str:
    """Reserve the job and get its job-acquisition token through the Stacks API."""

    def post(method: str, path: str, body: object) -> dict[str, object]:
        resp = http_request(
            method,
            fake.endpoint + path,
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"},
            body=json.dumps(body).encode(),
        )
        assert resp.status in (200, 201), resp.body
        result: dict[str, object] = resp.json()
        return result

    stack = {"key": "e2e", "type": "custom", "queue_key": "exact", "metadata": {}}
    post("POST", "/stacks/register", stack)
    post("PUT", "/stacks/e2e/scheduled-jobs/batch-reserve", {"job_uuids": [uuid]})
    issued = post("POST", "/stacks/e2e/job-acquisition-tokens", {"job_uuids": [uuid]})
    tokens = issued["job_acquisition_tokens"]
    assert isinstance(tokens, list) and len(tokens) == 1
    return str(tokens[0]["job_acquisition_token"])


def test_acquire_job_runs_exactly_that_job_and_a_second_acquire_exits_27(
    fake: FakeBuildkite, agents: Agents
) -> None:
    older = fake.enqueue("exact", "echo should-not-run")
    wanted = fake.enqueue("exact", "echo acquired-job-ran; sleep 2")
    token = _acquisition_token(fake, wanted)

    first = agents.start("--acquire-job", wanted, token=token, queue="exact")
    wait_until("the acquired job to run", lambda: fake.job(wanted).state == "running")
    # A duplicate agent while the first runs it (422: already acquired) ...
    duplicate = agents.start("--acquire-job", wanted, queue="exact")
    assert agents.wait(duplicate) == ACQUISITION_REJECTED, agents.log(duplicate)
    job = ended(fake, wanted, agents)
    assert agents.wait(first) == 0, agents.log(first)
    assert (job.state, job.exit_status) == ("finished", 0)
    assert "acquired-job-ran" in fake.job_log(wanted)
    assert token not in fake.job_log(wanted)
    assert fake.job(older).state == "scheduled"  # exactly that job, nothing else
    first_agent = next(a for a in fake.agents() if a["name"] == "e2e-0")
    assert first_agent["bound_job"] == wanted and first_agent["ignore_in_dispatches"] is True
    assert first_agent["jobs"] == [wanted] and job.agent_uuid == first_agent["uuid"]

    # ... and one after it finished (422: finished) exit 27 too.
    late = agents.start("--acquire-job", wanted, queue="exact")
    assert agents.wait(late) == ACQUISITION_REJECTED, agents.log(late)
    assert fake.job(wanted).agent_uuid == first_agent["uuid"]  # still the first agent's job


def test_cancel_stops_a_running_sleep_job(fake: FakeBuildkite, agents: Agents) -> None:
    # The log echoes the command: what it would print after the sleep is computed.
    uuid = fake.enqueue("default", 'echo going-to-sleep; sleep 300; echo "woke-$((40 + 2))"')
    index = agents.start("--disconnect-after-job")
    wait_until("the job to run", lambda: "going-to-sleep" in fake.job_log(uuid))
    assert fake.job(uuid).state == "running"

    asked = time.monotonic()
    assert fake.cancel_job(uuid) == "canceling"
    job = ended(fake, uuid, agents, timeout=60)
    took = time.monotonic() - asked
    assert agents.wait(index) == 0
    assert job.state == "canceled"
    assert job.exit_status not in (None, 0)
    assert "woke-42" not in fake.job_log(uuid)
    assert took < 30, f"cancel took {took:.1f}s"


def test_the_agent_log_never_shows_the_registration_token(
    fake: FakeBuildkite, agents: Agents
) -> None:
    uuid = fake.enqueue("default", "true")
    index = agents.start("--disconnect-after-job", "--debug")
    ended(fake, uuid, agents)
    assert agents.wait(index) == 0
    log = agents.procs[index][1].read_text(errors="replace")
    assert "Registering agent" in log or "Successfully registered" in log, log[-2000:]
    assert TOKEN not in log


def test_ctl_drives_a_standalone_fake_and_a_long_lived_agent(agents: Agents) -> None:
    """What a sandbox does: the fake as its own process, ctl against it, an agent that stays."""
    token_file = agents.root / "token"
    token_file.write_text(TOKEN)
    serve = ["--port", "0", "--token-file", str(token_file)]
    fake_proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_buildkite", *serve],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    standalone: Agents | None = None
    try:
        assert fake_proc.stdout is not None
        url = fake_proc.stdout.readline().strip()
        standalone = Agents(agents.binary, url + "/v3", agents.root)
        standalone.start()  # long-lived: it keeps taking jobs

        def ctl(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tests.support.fake_buildkite.ctl", "--url", url, *args],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        failing = ctl("enqueue", "--command", "echo via-ctl; exit 4", "--wait", "--timeout", "60")
        assert failing.returncode == 4, failing.stderr + standalone.log(0)
        assert "via-ctl" in failing.stdout and "\x1b" not in failing.stdout
        passing = ctl("enqueue", "--command", "echo second-job", "--env", "X=1", "--wait")
        assert passing.returncode == 0, passing.stderr
        assert "second-job" in passing.stdout
        listed = ctl("agents")
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1, listed.stdout
        assert " e2e-0 default connected" in listed.stdout
        jobs = ctl("jobs").stdout.splitlines()
        assert len(jobs) == 2 and all("agent=e2e-0" in line for line in jobs), jobs
        # Told to disconnect at its next ping, the agent exits by itself.
        FakeControl(url).disconnect_agent(listed.stdout.split()[0])
        assert standalone.wait(0, timeout=30) == 0, standalone.log(0)
        assert " e2e-0 default disconnected" in ctl("agents").stdout
    finally:
        if standalone is not None:
            standalone.stop_all()
        fake_proc.send_signal(signal.SIGTERM)
        out, err = fake_proc.communicate(timeout=10)
    assert TOKEN not in out + err


def test_the_agent_retries_through_server_errors_on_chunks_and_finish(
    fake: FakeBuildkite, agents: Agents
) -> None:
    """Injected 500s (the fake's fault injection reaches the agent API's routes too)."""
    uuid = fake.enqueue("default", "echo survived-faults; exit 5")
    fake.inject("agent_chunks", "500", times=2)
    fake.inject("agent_finish", "503", times=1)
    index = agents.start("--disconnect-after-job")
    job = ended(fake, uuid, agents)
    assert agents.wait(index) == 0
    assert (job.state, job.exit_status) == ("finished", 5)
    assert "survived-faults" in fake.job_log(uuid)
    assert fake.pending_faults == []
    statuses = [r.status for r in fake.requests if r.route == "agent_finish"]
    assert statuses == [503, 200]

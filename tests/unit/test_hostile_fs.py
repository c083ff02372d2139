"""Hostile file systems, remote references and tool output: what an attacker's overlay tries.

Each case runs the real CLI in a fresh process.  stackgen must read nothing outside the
overlay, never hang on a special file, never delete a folder it did not render, never
reach the network, and never print a secret a tool quoted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import Run
from tests.support.overlays import MINIMAL, write
from tests.unit.test_bad_input import TOKEN, assert_rejected, set_stack

OUTSIDE_NAME = "leaked-from-outside"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the overlay, holding what must never reach a build."""
    folder = tmp_path / "outside"
    write(
        folder / "leak.yaml",
        f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {OUTSIDE_NAME}}}\n",
    )
    write(folder / "token", "outside-token-value\n")
    return folder


def with_extra(overlay: Path, kustomization: str) -> Path:
    """An extra kustomization folder ``extra/`` that stack.yaml adds."""
    write(overlay / "extra" / "kustomization.yaml", kustomization)
    set_stack(overlay, "secrets:\n", "kustomize:\n  resources: [extra]\nsecrets:\n")
    return overlay / "extra"


def quick(run: Run, started: float, limit: float = 30) -> Run:
    assert time.monotonic() - started < limit, "a special file must be refused, not read"
    return run


# ------------------------------------------------------------- links and special files


def test_link_out_used_only_by_an_extra_kustomization(
    stackgen: Callable[..., Run], minimal: Path, outside: Path
) -> None:
    extra = with_extra(minimal, "resources: [leak.yaml]\n")
    (extra / "leak.yaml").symlink_to(outside / "leak.yaml")
    run = stackgen("build", str(minimal))
    assert_rejected(
        run, "mini/extra/leak.yaml: is a symbolic link that leads outside the overlay folder"
    )
    assert OUTSIDE_NAME not in run.stderr


def test_link_out_that_nothing_uses(
    stackgen: Callable[..., Run], minimal: Path, outside: Path
) -> None:
    (minimal / "notes.yaml").symlink_to(outside / "leak.yaml")
    assert_rejected(
        stackgen("build", str(minimal)),
        "mini/notes.yaml: is a symbolic link that leads outside the overlay folder",
    )


def test_folder_link_out(stackgen: Callable[..., Run], minimal: Path, outside: Path) -> None:
    (minimal / "vendor").symlink_to(outside, target_is_directory=True)
    assert_rejected(
        stackgen("build", str(minimal)),
        "mini/vendor: is a symbolic link that leads outside the overlay folder",
    )


def test_stack_file_linked_outside(
    stackgen: Callable[..., Run], minimal: Path, outside: Path
) -> None:
    (outside / "stack.yaml").write_text((minimal / "stack.yaml").read_text())
    (minimal / "stack.yaml").unlink()
    (minimal / "stack.yaml").symlink_to(outside / "stack.yaml")
    assert_rejected(
        stackgen("build", str(minimal)),
        "mini/stack.yaml: is a symbolic link that leads outside the overlay folder",
    )


def test_stack_file_linked_outside_without_validation(
    stackgen: Callable[..., Run], minimal: Path, outside: Path, tmp_path: Path
) -> None:
    # render --no-validate loads stack.yaml without the build's own scan first.
    (outside / "stack.yaml").write_text((minimal / "stack.yaml").read_text())
    (minimal / "stack.yaml").unlink()
    (minimal / "stack.yaml").symlink_to(outside / "stack.yaml")
    run = stackgen("render", str(minimal), "--out", str(tmp_path / "out"), "--no-validate")
    assert_rejected(run, "mini/stack.yaml: is a symbolic link that leads outside the overlay")
    assert not (tmp_path / "out").exists()


def test_secret_linked_to_dev_zero(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "secrets" / "token").unlink()
    (minimal / "secrets" / "token").symlink_to("/dev/zero")
    started = time.monotonic()
    run = quick(stackgen("build", str(minimal)), started)
    assert_rejected(run, "mini/secrets/token: is a symbolic link that leads outside")


def test_secret_path_naming_a_device(stackgen: Callable[..., Run], minimal: Path) -> None:
    set_stack(minimal, "file: secrets/token", "file: /dev/zero")
    started = time.monotonic()
    run = quick(stackgen("build", str(minimal)), started)
    # Composing runs before the schema check ends: the device is never read meanwhile.
    assert_rejected(run, "secrets.agentToken.file: must be a path relative to the overlay")


def test_fifo_that_nothing_uses(stackgen: Callable[..., Run], minimal: Path) -> None:
    os.mkfifo(minimal / "secrets" / "pipe")
    started = time.monotonic()
    run = quick(stackgen("build", str(minimal)), started)
    assert_rejected(run, "mini/secrets/pipe: is a named pipe (FIFO), not a regular file")


def test_fifo_as_the_token_file(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "secrets" / "token").unlink()
    os.mkfifo(minimal / "secrets" / "token")
    started = time.monotonic()
    run = quick(stackgen("build", str(minimal)), started)
    assert_rejected(run, "mini/secrets/token: is a named pipe (FIFO), not a regular file")


def test_fifo_in_a_plain_overlay(stackgen: Callable[..., Run], tmp_path: Path) -> None:
    overlay = tmp_path / "plain"
    write(overlay / "kustomization.yaml", "resources: [cm.yaml]\n")
    os.mkfifo(overlay / "cm.yaml")
    started = time.monotonic()
    run = quick(stackgen("build", str(overlay)), started)
    assert_rejected(run, "plain/cm.yaml: is a named pipe (FIFO), not a regular file")


def test_fifo_as_stack_file(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "stack.yaml").unlink()
    os.mkfifo(minimal / "stack.yaml")
    started = time.monotonic()
    run = quick(stackgen("build", str(minimal)), started)
    assert_rejected(run, "mini/stack.yaml: is a named pipe (FIFO), not a regular file")


def test_folder_link_loop(stackgen: Callable[..., Run], minimal: Path) -> None:
    (minimal / "extra").mkdir()
    (minimal / "extra" / "again").symlink_to(minimal, target_is_directory=True)
    assert_rejected(
        stackgen("build", str(minimal)),
        "mini/extra/again: is a symbolic link to a folder that holds it (a loop)",
    )


def test_links_inside_the_overlay_are_followed(stackgen: Callable[..., Run], minimal: Path) -> None:
    write(minimal / "shared" / "cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    extra = with_extra(minimal, "resources: [cm.yaml]\n")
    (extra / "cm.yaml").symlink_to(minimal / "shared" / "cm.yaml")
    (minimal / "secrets" / "real-token").write_text(f"{TOKEN}\n")
    (minimal / "secrets" / "token").unlink()
    (minimal / "secrets" / "token").symlink_to("real-token")
    run = stackgen("build", str(minimal))
    assert run.code == 0, run.stderr
    assert b"name: x\n" in run.stdout


# ------------------------------------------------------------------- render --out


def overlay_files(overlay: Path) -> set[str]:
    return {p.relative_to(overlay).as_posix() for p in overlay.rglob("*")}


def test_render_out_inside_the_overlay_is_refused_before_writing(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    before = overlay_files(minimal)
    started = time.monotonic()
    run = stackgen("render", str(minimal), "--out", str(minimal / "rendered"))
    assert time.monotonic() - started < 30
    assert_rejected(run, "mini/rendered: --out is inside the overlay")
    assert len(run.stderr) < 500
    assert overlay_files(minimal) == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_render_out_equal_to_the_overlay_is_refused(
    stackgen: Callable[..., Run], minimal: Path, force: list[str]
) -> None:
    before = overlay_files(minimal)
    run = stackgen("render", str(minimal), "--out", str(minimal), *force)
    assert_rejected(run, "--out is inside the overlay")
    assert overlay_files(minimal) == before


def test_render_out_holding_the_overlay_is_refused(
    stackgen: Callable[..., Run], minimal: Path, tmp_path: Path
) -> None:
    write(tmp_path / "sibling" / "secrets" / "token", "git-ignored\n")
    run = stackgen("render", str(minimal), "--out", str(tmp_path), "--force")
    assert_rejected(run, "--out holds the overlay: render into a folder beside it")
    assert (minimal / "stack.yaml").is_file()
    assert (tmp_path / "sibling" / "secrets" / "token").is_file()


def test_render_force_refuses_a_folder_stackgen_did_not_render(
    stackgen: Callable[..., Run], minimal: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    write(precious / "keep.txt", "mine\n")
    run = stackgen("render", str(minimal), "--out", str(precious), "--force")
    assert_rejected(run, "precious: was not rendered by stackgen (no .stackgen-render in it)")
    assert (precious / "keep.txt").read_text() == "mine\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".stackgen")] == []


def test_render_force_replaces_what_it_rendered(
    stackgen: Callable[..., Run], minimal: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rendered"
    first = stackgen("render", str(minimal), "--out", str(out), "--no-validate")
    assert first.code == 0, first.stderr
    assert (out / ".stackgen-render").is_file()
    (out / "stale.txt").write_text("old\n")
    again = stackgen("render", str(minimal), "--out", str(out), "--force", "--no-validate")
    assert again.code == 0, again.stderr
    assert (out / ".stackgen-render").is_file()
    assert not (out / "stale.txt").exists()
    assert (out / "kustomization.yaml").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".stackgen")] == []


# ----------------------------------------------------------------- SIGTERM mid-build


def slow_kustomize(tmp_path: Path, marker: Path) -> dict[str, str]:
    """Tools whose kustomize answers `version` and then hangs in `build` (pid in ``marker``)."""
    from tests.support.paths import ROOT

    tools = tmp_path / "slow-tools"
    (tools / "bin").mkdir(parents=True)
    (tools / "bin" / "kubeconform").symlink_to(ROOT / ".tools" / "bin" / "kubeconform")
    write(
        tools / "bin" / "kustomize",
        f"""
        #!/bin/bash
        set -euo pipefail
        if [ "$1" = version ]; then echo v5.8.1; exit 0; fi
        echo $$ > {marker}
        exec sleep 120
        """,
        mode=0o755,
    )
    return {"STACKGEN_TOOLS_DIR": str(tools)}


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.fixture
def interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here and in the processes started meanwhile.

    A shell starts a background job (``bin/test &`` in a script) with SIGINT ignored, and
    its children inherit that: a test of what Ctrl-C does must not depend on how the suite
    was started.
    """
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.usefixtures("interruptible")
def test_signal_mid_build_removes_the_temporary_tree(
    minimal: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    from tests.support.paths import ROOT

    temp = tmp_path / "temp"
    temp.mkdir()
    marker = tmp_path / "kustomize.pid"
    env = {**os.environ, **slow_kustomize(tmp_path, marker), "TMPDIR": str(temp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackgen", "build", str(minimal)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text().strip():
            assert time.monotonic() < deadline, "kustomize never started"
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        trees = list(temp.glob("stackgen-*/tree/stack/overlay/secrets/token"))
        assert trees, "the temporary tree holds the token while kustomize runs"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == (143 if sig == signal.SIGTERM else 1), err
    assert out == b""
    assert b"Traceback" not in err
    assert list(temp.iterdir()) == [], "the temporary tree (with the token) must be removed"
    assert gone(int(marker.read_text())), "kustomize must be stopped"


@pytest.mark.usefixtures("interruptible")
def test_a_signal_handed_to_the_thread_reading_a_tool_still_ends_the_wait() -> None:
    """The kernel hands a process-directed signal to any thread that does not block it.
    When it lands on the thread reading a tool's output, the main thread waiting for the
    tool must still raise at once, not when the tool ends."""
    from stackgen import tools

    running = tools.start(tools.Tool("sleep", ("sleep",), "test"), ["10"], timeout=60)
    reader = next(t for t in threading.enumerate() if t.name == "stackgen-sleep")
    assert reader.ident is not None
    kill = threading.Timer(0.3, signal.pthread_kill, (reader.ident, signal.SIGINT))
    started = time.monotonic()
    kill.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            running.wait()
        waited = time.monotonic() - started
    finally:
        kill.join()
        running.cancel()
    assert waited < 3, f"the wait went on {waited:.1f} s after the signal"


# ------------------------------------------------------------ messages show real paths


@pytest.mark.parametrize("name", ["e", "s", "."])
def test_short_overlay_names_leave_kustomize_messages_intact(
    stackgen: Callable[..., Run], tmp_path: Path, name: str
) -> None:
    folder = tmp_path / "work"
    overlay = folder / name
    write(overlay / "kustomization.yaml", "resources: [missing-file-source.yaml]\n")
    run = stackgen("build", name, cwd=folder)
    assert_rejected(run, "kustomization.yaml: kustomize: accumulating resources")
    shown = "missing-file-source.yaml" if name == "." else f"{name}/missing-file-source.yaml"
    assert shown in run.stderr, run.stderr
    assert "no such file or directory" in run.stderr
    assert str(tmp_path) not in run.stderr


def test_stack_overlay_messages_name_the_overlay_not_the_temporary_tree(
    stackgen: Callable[..., Run], tmp_path: Path, minimal: Path
) -> None:
    overlay = minimal.rename(tmp_path / "e")
    with_extra(overlay, "resources: [missing-file-source.yaml]\n")
    run = stackgen("build", "e", cwd=tmp_path)
    assert_rejected(run, "e/stack.yaml: kustomize: ")
    assert "e/extra/missing-file-source.yaml" in run.stderr, run.stderr
    assert "/tmp/stackgen-" not in run.stderr and "stackgen-" not in run.stderr.split(":", 1)[1]


# ------------------------------------------------------- validate keeps going


def test_validate_checks_every_overlay_after_a_fifo(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        write(tmp_path / name / "stack.yaml", MINIMAL)
        write(tmp_path / name / "secrets" / "token", f"{TOKEN}\n")
    os.mkfifo(tmp_path / "b" / "pipe")
    run = stackgen("validate", "a", "b", "c", cwd=tmp_path)
    assert run.code == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert run.lines == [
        "b/pipe: is a named pipe (FIFO), not a regular file: stackgen reads only regular files"
    ]
    lines = run.stdout.decode().splitlines()
    assert [line.split(" (")[0] for line in lines[:3]] == ["ok   a", "FAIL b", "ok   c"], lines
    assert lines[-1] == "3 overlays: 2 valid, 1 invalid"


def test_validate_reports_an_internal_error_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from stackgen import pipeline
    from stackgen.cli import cli

    real_build = pipeline.build

    def flaky(overlay: str, options: pipeline.BuildOptions | None = None) -> pipeline.BuildResult:
        if Path(overlay).name == "b":
            raise RuntimeError("something nobody foresaw")
        return real_build(overlay, options)

    monkeypatch.setattr(pipeline, "build", flaky)
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b", "c"):
        write(tmp_path / name / "stack.yaml", MINIMAL)
        write(tmp_path / name / "secrets" / "token", f"{TOKEN}\n")
    result = CliRunner().invoke(cli, ["validate", "a", "b", "c"])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert [line[:4] for line in lines[:3]] == ["ok  ", "FAIL", "ok  "], lines
    assert lines[-1] == "3 overlays: 2 valid, 1 invalid"
    assert (
        "b: internal error: RuntimeError: something nobody foresaw (run with --debug"
        in result.stderr
    )


# ---------------------------------------------------------------------- no network


class Listener:
    """A TCP port on 127.0.0.1 that counts who connects (and answers nothing)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Any:
    served = Listener()
    yield served
    served.close()


REMOTES = [
    "https://127.0.0.1:{port}/cm.yaml",
    "http://127.0.0.1:{port}/cm.yaml",
    "git@127.0.0.1:org/repo.git",
    "ssh://git@127.0.0.1:{port}/org/repo.git",
    "github.com/example/repo/deploy?ref=v1.0.0",
    "https://127.0.0.1:{port}/org/repo.git//deploy?ref=main",
    "git::https://127.0.0.1:{port}/org/repo.git",
]


@pytest.mark.parametrize("remote", REMOTES)
def test_remote_resource_in_an_extra_kustomization_is_refused(
    stackgen: Callable[..., Run], minimal: Path, listener: Listener, remote: str
) -> None:
    with_extra(minimal, f"resources: ['{remote.format(port=listener.port)}']\n")
    run = stackgen("build", str(minimal))
    assert_rejected(
        run, "mini/extra/kustomization.yaml: resources[0]: is a remote reference", code=1
    )
    assert listener.connections == 0


@pytest.mark.parametrize("field", ["resources", "components", "bases"])
def test_remote_resource_in_a_plain_overlay_is_refused(
    stackgen: Callable[..., Run], tmp_path: Path, listener: Listener, field: str
) -> None:
    overlay = tmp_path / "plain"
    write(overlay / "kustomization.yaml", f"{field}: ['http://127.0.0.1:{listener.port}/x']\n")
    run = stackgen("build", str(overlay))
    assert_rejected(run, f"plain/kustomization.yaml: {field}[0]: is a remote reference")
    assert listener.connections == 0


def test_remote_resource_in_stack_yaml_is_refused_before_kustomize(
    stackgen: Callable[..., Run], minimal: Path, listener: Listener
) -> None:
    set_stack(
        minimal,
        "secrets:\n",
        f"kustomize:\n  resources: ['http://127.0.0.1:{listener.port}/x.yaml']\nsecrets:\n",
    )
    run = stackgen("build", str(minimal))
    assert_rejected(run, "stack.yaml: kustomize.resources[0]: is a remote reference")
    assert listener.connections == 0


def test_local_path_out_of_the_overlay_in_an_extra_kustomization(
    stackgen: Callable[..., Run], minimal: Path, outside: Path
) -> None:
    with_extra(
        minimal,
        f"resources: ['{outside}']\nconfigMapGenerator: [{{name: x, files: [../../outside/token]}}]\n",
    )
    run = stackgen("build", str(minimal))
    assert_rejected(
        run,
        "mini/extra/kustomization.yaml: resources[0]: leads outside the overlay folder",
        "mini/extra/kustomization.yaml: configMapGenerator[0]: leads outside the overlay folder",
    )


def test_plain_overlay_base_beside_it_is_checked_the_same_way(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    write(tmp_path / "base" / "kustomization.yaml", "resources: [cm.yaml]\n")
    os.mkfifo(tmp_path / "base" / "cm.yaml")
    write(tmp_path / "prod" / "kustomization.yaml", "resources: [../base]\n")
    started = time.monotonic()
    run = quick(stackgen("build", str(tmp_path / "prod")), started)
    assert_rejected(run, "base/cm.yaml: is a named pipe (FIFO), not a regular file")


def test_kustomize_runs_offline_even_if_a_remote_slips_through(
    tmp_path: Path, listener: Listener
) -> None:
    # The refusal above is the first line; this is the second: kustomize itself started
    # on a remote git reference (as if the check had missed it) never connects.
    from stackgen import tools

    overlay = tmp_path / "slipped"
    url = f"https://127.0.0.1:{listener.port}/org/repo.git//deploy?ref=main"
    write(overlay / "kustomization.yaml", f"resources: ['{url}']\n")
    proc = tools.start_kustomize(overlay).wait()
    assert proc.returncode != 0
    assert b"transport 'https' not allowed" in proc.stderr, proc.stderr  # git: file only
    if tools.network_namespace():  # where the machine allows one, not even loopback
        assert b"network is unreachable" in proc.stderr, proc.stderr
        assert listener.connections == 0


def test_kustomize_http_fetches_go_to_a_closed_proxy(tmp_path: Path) -> None:
    from stackgen import tools

    overlay = tmp_path / "slipped"
    write(overlay / "kustomization.yaml", "resources: ['http://stackgen-test.invalid/x.yaml']\n")
    proc = tools.start_kustomize(overlay).wait()
    assert proc.returncode != 0
    assert b"127.0.0.1:9" in proc.stderr, proc.stderr


# ------------------------------------------------------- secrets never echoed


def test_invalid_utf8_env_file_in_a_plain_overlay_is_not_echoed(
    stackgen: Callable[..., Run], tmp_path: Path
) -> None:
    overlay = tmp_path / "plain"
    write(
        overlay / "kustomization.yaml",
        "secretGenerator:\n  - name: token\n    envs: [secret.env]\n",
    )
    (overlay / "secret.env").write_bytes(b"TOKEN=" + TOKEN.encode() + b"\xff\xfe\n")
    run = stackgen("build", str(overlay))
    assert_rejected(run, "plain/kustomization.yaml: kustomize: ", "invalid utf8", "<redacted>")
    numbers = " ".join(str(b) for b in TOKEN.encode())
    assert numbers not in run.stderr  # nor the token's bytes spelled as numbers


def test_invalid_utf8_env_file_in_an_extra_kustomization_is_not_echoed(
    stackgen: Callable[..., Run], minimal: Path
) -> None:
    extra = with_extra(minimal, "secretGenerator:\n  - name: other\n    envs: [other.env]\n")
    (extra / "other.env").write_bytes(b"OTHER=other-secret-value\xff\n")
    run = stackgen("build", str(minimal))
    assert_rejected(run, "stack.yaml: kustomize: ", "<redacted>")
    assert "other-secret-value" not in run.stderr
    assert " ".join(str(b) for b in b"other-secret-value") not in run.stderr


def test_redactor_hides_lines_values_and_byte_lists() -> None:
    from stackgen.common.redact import REDACTED, Redactor

    blob = b"# header line\nKEY=value-1234\nkey-line-secret\nabc\n"
    redactor = Redactor([blob])
    assert redactor.text("got value-1234 here") == f"got {REDACTED} here"
    assert redactor.text("KEY=value-1234") == REDACTED
    assert redactor.text("x key-line-secret y") == f"x {REDACTED} y"
    assert redactor.text("abc stays: too short") == "abc stays: too short"
    numbers = " ".join(str(b) for b in b"KEY=value-1234")
    assert redactor.text(f"line [{numbers}] bad") == f"line [{REDACTED}] bad"
    assert redactor.text("line [1 2 3] fine") == "line [1 2 3] fine"

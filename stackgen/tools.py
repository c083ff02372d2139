"""The external tools stackgen drives: kustomize (or ``kubectl kustomize``), kubeconform, kubectl.

Tools are looked up first in ``$STACKGEN_TOOLS_DIR/bin``, then in the checkout's
``.tools/bin`` (what ``bin/setup`` installs), then on ``PATH``.  Their versions are
checked once per process, and :func:`warm_up` runs those checks in the background while
stackgen loads and composes (they only wait on a subprocess).  :func:`start` runs a tool
in the background, so the build does Python work while kustomize or kubeconform runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from stackgen.common.errors import BuildError, Problem, ToolError
from stackgen.common.files import display_path
from stackgen.common.output import notice
from stackgen.common.resources import repo_root

KUSTOMIZE_INSTALL = "go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1"
KUBECONFORM_INSTALL = "go install github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0"
_MIN_KUSTOMIZE = (5, 0)


@dataclass(frozen=True)
class Tool:
    """A located, version-checked executable."""

    name: str
    argv: tuple[str, ...]
    version: str
    #: Set when a fallback replaced the preferred tool (shown to the user once).
    notice: str | None = None


def tool_dirs() -> list[Path]:
    """Folders searched before PATH: ``$STACKGEN_TOOLS_DIR/bin`` if set, else ``.tools/bin``."""
    env = os.environ.get("STACKGEN_TOOLS_DIR")
    if env:
        return [Path(env) / "bin"]
    dirs = []
    root = repo_root()
    if root is not None:
        dirs.append(root / ".tools" / "bin")
    return dirs


def which(name: str) -> Path | None:
    """Find an executable in stackgen's tool folders, then on PATH."""
    for folder in tool_dirs():
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _run_version(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise ToolError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{argv[0]} did not answer `{' '.join(argv[1:])}` within 30 s") from exc
    return proc.stdout.strip() or proc.stderr.strip()


def _parse_version(text: str) -> tuple[int, int] | None:
    match = re.search(r"v?(\d+)\.(\d+)(?:\.\d+)?", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def kustomize() -> Tool:
    """The standalone kustomize v5, or ``kubectl kustomize`` as a fallback."""
    _settle()
    return _find_kustomize()


def kubeconform() -> Tool:
    """kubeconform, which validates the built stack against offline schemas."""
    _settle()
    return _find_kubeconform()


_warming: list[threading.Thread] = []


def warm_up(*names: str) -> None:
    """Locate and check these tools (``kustomize``, ``kubeconform``, ``unshare``) in the background.

    A failure is not reported here: the next :func:`kustomize` or :func:`kubeconform`
    call finds it again and raises it.
    """
    finders: dict[str, Callable[[], object]] = {
        "kustomize": _find_kustomize,
        "unshare": network_namespace,
        "kubeconform": _find_kubeconform,
    }
    for name in names:
        thread = threading.Thread(
            target=_quietly, args=(finders[name],), name=f"stackgen-find-{name}", daemon=True
        )
        thread.start()
        _warming.append(thread)


def _quietly(finder: Callable[[], object]) -> None:
    # A failure is raised again by the caller's own lookup.
    with contextlib.suppress(Exception):
        finder()


def _settle() -> None:
    while _warming:
        _warming.pop().join()


@cache
def _find_kustomize() -> Tool:
    path = which("kustomize")
    if path is not None:
        text = _run_version([str(path), "version"])
        parsed = _parse_version(text)
        if parsed is None or parsed < _MIN_KUSTOMIZE:
            raise ToolError(
                f"kustomize at {path} reports version {text!r}; stackgen needs v5 or newer: "
                f"{KUSTOMIZE_INSTALL}"
            )
        found = re.search(r"v?\d+\.\d+\.\d+", text)
        return Tool("kustomize", (str(path), "build"), found.group(0) if found else text)
    kubectl_path = which("kubectl")
    if kubectl_path is not None:
        text = _run_version([str(kubectl_path), "version", "--client", "-o", "json"])
        try:
            version = str(json.loads(text).get("kustomizeVersion", ""))
        except json.JSONDecodeError:
            version = ""
        parsed = _parse_version(version)
        if parsed is None or parsed < _MIN_KUSTOMIZE:
            raise ToolError(
                f"kustomize not found, and kubectl at {kubectl_path} embeds kustomize "
                f"{version or 'of unknown version'} (stackgen needs v5): {KUSTOMIZE_INSTALL}"
            )
        return Tool(
            "kubectl kustomize",
            (str(kubectl_path), "kustomize"),
            version,
            notice=f"kustomize not found; using `kubectl kustomize` ({version})",
        )
    raise ToolError(
        "neither kustomize nor kubectl found: run bin/setup, or install kustomize with: "
        + KUSTOMIZE_INSTALL
    )


@cache
def _find_kubeconform() -> Tool:
    path = which("kubeconform")
    if path is None:
        raise ToolError(
            "kubeconform not found (needed to validate the stack offline): run bin/setup, "
            f"or install it with: {KUBECONFORM_INSTALL} (and put $(go env GOPATH)/bin on PATH)"
        )
    version = _run_version([str(path), "-v"])
    return Tool("kubeconform", (str(path),), version)


@cache
def kubectl() -> Tool:
    """kubectl, for server-side dry runs."""
    path = which("kubectl")
    if path is None:
        raise ToolError("kubectl not found: --server-dry-run needs kubectl and a kube context")
    return Tool("kubectl", (str(path),), "")


def run(
    tool: Tool,
    args: list[str],
    *,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool, returning the completed process (never raising on a non-zero exit)."""
    argv = [*tool.argv, *args]
    try:
        return subprocess.run(
            argv, input=stdin, capture_output=True, cwd=cwd, timeout=timeout, check=False
        )
    except OSError as exc:
        raise ToolError(f"cannot run {tool.name}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{tool.name} took longer than {timeout:.0f} s") from exc


#: How often a wait for a tool looks for a signal (see :meth:`Running.wait`).
SIGNAL_CHECK = 0.1


class Running:
    """A tool running in the background; :meth:`wait` gives what :func:`run` would.

    With ``open_stdin`` its input is given later: :meth:`write` some now, :meth:`finish`
    with the rest (kubeconform validates documents as they arrive).
    """

    def __init__(
        self,
        tool: Tool,
        args: list[str],
        *,
        stdin: bytes | None,
        cwd: Path | None,
        timeout: float,
        open_stdin: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.tool = tool
        self._argv = [*tool.argv, *args]
        self._timeout = timeout
        try:
            self._proc = subprocess.Popen(
                self._argv,
                stdin=subprocess.PIPE if stdin is not None or open_stdin else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                # Its own process group: cancel() stops whatever the tool started too.
                process_group=0,
            )
        except OSError as exc:
            raise ToolError(f"cannot run {tool.name}: {exc.strerror}") from exc
        self._result: subprocess.CompletedProcess[bytes] | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not open_stdin:
            try:
                self.finish(stdin)
            except BaseException:  # a signal before anyone holds this: stop the tool now
                self.cancel()
                raise

    def write(self, data: bytes) -> None:
        """Send input now (small amounts: the tool's output is read only after finish)."""
        assert self._proc.stdin is not None and self._thread is None
        with contextlib.suppress(BrokenPipeError):  # it died: wait() tells how
            self._proc.stdin.write(data)
            self._proc.stdin.flush()

    def finish(self, data: bytes | None = None) -> None:
        """Send the rest of the input, close it, and collect the output in the background."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._communicate, args=(data,), name=f"stackgen-{self.tool.name}", daemon=True
        )
        self._thread.start()

    def _communicate(self, stdin: bytes | None) -> None:
        try:
            out, err = self._proc.communicate(stdin, timeout=self._timeout)
            self._result = subprocess.CompletedProcess(self._argv, self._proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
            self._error = ToolError(f"{self.tool.name} took longer than {self._timeout:.0f} s")
        except BaseException as exc:  # handed to the thread that waits
            self._proc.kill()
            self._error = exc

    def wait(self) -> subprocess.CompletedProcess[bytes]:
        """The completed process (never raising on a non-zero exit)."""
        self.finish()
        assert self._thread is not None
        # Joined a little at a time: Ctrl-C (or SIGTERM) that the kernel hands to the thread
        # reading the tool's output is acted on only when the main thread runs Python code
        # again, and an unbounded join would sleep through it until the tool ends.
        while self._thread.is_alive():
            self._thread.join(timeout=SIGNAL_CHECK)
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop the tool and what it started (its result is not wanted any more)."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join(timeout=10)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.communicate(timeout=10)


def start(
    tool: Tool,
    args: list[str],
    *,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    open_stdin: bool = False,
    env: Mapping[str, str] | None = None,
) -> Running:
    """Start a tool in the background (see :func:`run` and :class:`Running`)."""
    return Running(
        tool, args, stdin=stdin, cwd=cwd, timeout=timeout, open_stdin=open_stdin, env=env
    )


# ------------------------------------------------------------------------- kustomize build


#: Where kustomize's HTTP client and git would connect: the discard port on loopback,
#: which nothing serves, so a fetch fails at once instead of reaching the network.
_NOWHERE = "http://127.0.0.1:9"


def offline_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) for a tool that must stay offline.

    Every proxy variable points at a closed local port (Go's HTTP client and git honour
    them); git may use only the ``file`` protocol, never prompts, and reads no system or
    global configuration (no ``insteadOf`` rewriting a path into a URL); ssh is ``false``.
    """
    env = dict(os.environ if base is None else base)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY"):
        env[name] = env[name.lower()] = _NOWHERE
    env["NO_PROXY"] = env["no_proxy"] = ""
    env.update(
        GIT_ALLOW_PROTOCOL="file",
        GIT_TERMINAL_PROMPT="0",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_SSH_COMMAND="false",
        GIT_ASKPASS="true",
    )
    return env


@cache
def network_namespace() -> tuple[str, ...]:
    """``unshare --net --map-root-user --`` when this machine allows it, else nothing.

    That is an empty network namespace (most machines allow one; many containers do not).
    Go's HTTP client never sends loopback addresses to a proxy: only a namespace keeps
    kustomize from 127.0.0.1 too.  ``STACKGEN_NO_NETNS=1`` turns it off.
    """
    path = shutil.which("unshare")
    if path is None or os.environ.get("STACKGEN_NO_NETNS"):
        return ()
    argv = (path, "--net", "--map-root-user")
    try:
        subprocess.run([*argv, "true"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (*argv, "--")


def start_kustomize(root: Path) -> Running:
    """Start ``kustomize build`` of one folder in the background, cut off from the network.

    The build refuses remote references before this runs
    (:mod:`stackgen.stack.references`); should one slip through, kustomize runs in an
    :func:`offline_environment`, and in a :func:`network_namespace` of its own (no network
    at all, not even loopback) where the machine allows one.
    """
    tool = kustomize()
    if tool.notice:
        notice(tool.notice)
    prefix = network_namespace()
    if prefix:
        tool = Tool(tool.name, (*prefix, *tool.argv), tool.version)
    return start(
        tool,
        ["--load-restrictor", "LoadRestrictionsRootOnly", str(root.absolute())],
        env=offline_environment(),
    )


def finish_kustomize(
    running: Running,
    root: Path,
    file: str,
    *,
    stack_overlay: Path | None = None,
    warnings: list[str] | None = None,
) -> bytes:
    """Wait for :func:`start_kustomize`; its failures become one-line BuildErrors.

    ``stack_overlay``: the overlay a composed tree copied (``root/stack/overlay``), so the
    messages name the user's files, not the temporary tree's.  ``warnings`` receives
    kustomize's own warnings of a build that succeeded (deprecated fields: ``commonLabels``,
    ``bases``, ``patchesStrategicMerge``, …), one line each, as ``kustomize: …``.
    """
    proc = running.wait()
    text = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise BuildError(_kustomize_problems(text, root, file, stack_overlay))
    if warnings is not None:
        warnings += kustomize_warnings(text, root, stack_overlay)
    return proc.stdout


def kustomize_warnings(text: str, root: Path, overlay: Path | None = None) -> list[str]:
    """The ``# Warning: …`` lines kustomize printed (nothing else it printed), each said once."""
    found: list[str] = []
    for raw in text.splitlines():
        line = raw.strip().removeprefix("#").strip()
        if line.lower().startswith("warning:"):
            message = f"kustomize: {_real_paths(line[8:].strip(), root, overlay)}"
            if message not in found:
                found.append(message)
    return found


def _real_paths(line: str, root: Path, overlay: Path | None) -> str:
    """Map the absolute paths kustomize prints back to the user's files.

    A composed tree's copy of the overlay becomes the overlay, the rest of the tree paths
    inside it.  Only whole absolute paths are replaced, never a short name inside a word.
    """
    for absolute in {str(root.absolute()), str(root.resolve())}:
        if overlay is None:
            line = _replace_path(line, absolute, display_path(root))
            continue
        line = _replace_path(line, f"{absolute}/stack/overlay", display_path(overlay))
        line = _replace_path(line.replace(f"{absolute}/", ""), absolute, ".")
    return line


def _kustomize_problems(text: str, root: Path, file: str, overlay: Path | None) -> list[Problem]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # kustomize prints "Error: <chain of causes>"; keep the error lines, not usage text.
    errors = [ln.removeprefix("Error: ") for ln in lines if ln.startswith("Error:")] or lines[-1:]
    problems = [
        Problem(file, "", f"kustomize: {_real_paths(line, root, overlay)}") for line in errors
    ]
    return problems or [Problem(file, "", "kustomize failed without a message")]


def _replace_path(line: str, absolute: str, shown: str) -> str:
    """Replace the path ``absolute`` (and paths below it) by ``shown`` in ``line``."""
    pattern = re.compile(re.escape(absolute) + r"(?![^/\s'\"\]:,)])")
    return pattern.sub(lambda _: shown, line)


def kubectl_json(kubectl: Tool, *args: str, timeout: float = 60) -> Any | None:
    """``kubectl ARGS -o json`` parsed, or None when the object does not exist."""
    proc = run(kubectl, [*args, "-o", "json"], timeout=timeout)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        if "NotFound" in err or "not found" in err:
            return None
        raise ToolError(f"kubectl {' '.join(args)}: {(err.splitlines() or ['failed'])[-1]}")
    return json.loads(proc.stdout)

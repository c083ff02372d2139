"""The stack's agent hooks in real containers on plain Docker (no cluster).

:class:`AgentRig` runs the fake Buildkite and the test git server as containers, and real
agents from the project's agent image with what a stack's agent pod mounts: the stack's
hooks (from its ConfigMaps, as built), its SSH key and known_hosts, its git-credentials,
``/buildkite/run`` in memory. The git server is reached under the sandbox's Service name
(``--add-host``), so the stack's known_hosts line for the sandbox holds here too.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stackgen.pipeline import build
from tests.support import kind, sandbox
from tests.support.cluster import versions, wait_for


def docker(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])} … exited {proc.returncode}: {proc.stderr}"
        )
    return proc


def missing_images() -> list[str]:
    pins = versions()
    names = [pins["IMAGE_FAKE_BUILDKITE"], pins["IMAGE_GIT_SERVER"], pins["IMAGE_AGENT"]]
    return [n for n in names if docker("image", "inspect", n, check=False).returncode != 0]


class AgentRig:
    """Fake Buildkite + git server containers, and agents with a stack's pod mounts."""

    def __init__(self, root: Path, keys: kind.Keys, overlay: Path) -> None:
        self.root = root
        self.keys = keys
        self.pins = versions()
        self.tag = f"stackgen-rig-{uuidlib.uuid4().hex[:8]}"
        self.containers: list[str] = []
        self.docs = [d for d in yaml.safe_load_all(build(overlay).manifest) if d]
        self._write_pod_files(overlay)

    # ------------------------------------------------------------------ set-up

    def _write_pod_files(self, overlay: Path) -> None:
        for doc in self.docs:
            labels = doc.get("metadata", {}).get("labels") or {}
            if (
                doc["kind"] == "ConfigMap"
                and labels.get("app.kubernetes.io/component") == "agent-hooks"
            ):
                name = (
                    "stackgen-hooks" if doc["metadata"]["name"].startswith("stackgen-") else "hooks"
                )
                for file, text in doc["data"].items():
                    path = self.root / name / file
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
                    path.chmod(0o755)
        self.ssh_dir(overlay / "secrets" / "known_hosts", "ssh")
        creds = self.root / "git-credentials"
        creds.mkdir()
        shutil.copyfile(overlay / "secrets" / "git-credentials", creds / "git-credentials")
        git = self.root / "git-config" / "ssh"
        git.mkdir(parents=True)
        (git / "ssh_host_ed25519_key").write_bytes(self.keys.host_private)
        (git / "ssh_host_ed25519_key").chmod(0o600)
        pub = sandbox.public_key(base64.b64encode(self.keys.ssh_private).decode())
        (git / "authorized_keys").write_text(pub + "\n")

    def ssh_dir(self, known_hosts: Path, name: str) -> Path:
        """A folder as the stack's ssh Secret volume, with ``known_hosts`` given."""
        path = self.root / name
        path.mkdir(exist_ok=True)
        (path / "ssh-privatekey").write_bytes(self.keys.ssh_private)
        shutil.copyfile(known_hosts, path / "known_hosts")
        return path

    def _run(self, name: str, *args: str) -> str:
        full = f"{self.tag}-{name}"
        docker("run", "-d", "--name", full, *args)
        self.containers.append(full)
        return full

    def ip(self, container: str) -> str:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return docker("inspect", "-f", fmt, container).stdout.strip()

    def start(self) -> AgentRig:
        git = self._run(
            "git",
            "-v",
            f"{self.root / 'git-config'}:/config:ro",
            "-e",
            f"GIT_SERVER_HOSTNAME={sandbox.GIT_HOST}",
            "-e",
            f"GIT_INIT_REPOS={sandbox.REPOSITORY}",
            "-e",
            f"GIT_HTTP_USER={kind.HTTP_USER}",
            "-e",
            f"GIT_HTTP_PASSWORD={self.keys.http_password}",
            self.pins["IMAGE_GIT_SERVER"],
        )
        self.git_ip = self.ip(git)
        # The fake's token in a file (never on a command line); its URL is its own address,
        # which is known only once it runs: a placeholder container finds the next address.
        token = self.root / "token"
        token.write_text(self.keys.token + "\n")
        token.chmod(0o644)
        probe = self._run("probe", "--entrypoint", "sleep", self.pins["IMAGE_FAKE_BUILDKITE"], "60")
        guess = self.ip(probe)
        docker("rm", "-f", "-v", probe)
        self.containers.remove(probe)
        fake = self._run(
            "fake",
            "-v",
            f"{token}:/secrets/token:ro",
            self.pins["IMAGE_FAKE_BUILDKITE"],
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--no-rate-limits",
            "--queue",
            "rig",
            "--token-file",
            "/secrets/token",
            "--advertise-url",
            f"http://{guess}:8080",
        )
        self.fake = fake
        assert self.ip(fake) == guess, "the fake did not get the address it advertises"
        self.fake_url = f"http://{guess}:8080"
        wait_for(lambda: self.ctl("jobs", check=False).returncode == 0, timeout=60, what="the fake")
        for port in (22, 443):
            wait_for(
                lambda port=port: (
                    docker(
                        "exec", git, "bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}", check=False
                    ).returncode
                    == 0
                ),
                timeout=60,
                what=f"the git server's port {port}",
            )
        return self

    def stop(self) -> None:
        for name in reversed(self.containers):
            docker("rm", "-f", "-v", name, check=False)
        self.containers.clear()

    # ------------------------------------------------------------------ driving

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return docker(
            "exec",
            self.fake,
            "python3",
            "-m",
            "tests.support.fake_buildkite.ctl",
            *args,
            check=check,
        )

    def enqueue(self, command: str) -> str:
        return self.ctl("enqueue", "--queue", "rig", "--command", command).stdout.strip()

    def agent(self, *args: str, ssh: Path | None = None, detach: bool = False) -> str:
        """An agent as the stack's pod runs it (``start ARGS``); its container name."""
        mounts = {
            "hooks": "/buildkite/hooks",
            "stackgen-hooks": "/buildkite/stackgen-hooks",
            "git-credentials": "/buildkite/secrets/git-credentials",
        }
        volumes = [f"{self.root / src}:{dst}:ro" for src, dst in mounts.items()]
        volumes.append(f"{ssh or self.root / 'ssh'}:/buildkite/secrets/ssh:ro")
        env: Mapping[str, str] = {
            "BUILDKITE_AGENT_ENDPOINT": f"{self.fake_url}/v3",
            "BUILDKITE_AGENT_TAGS": "queue=rig",
            "BUILDKITE_HOOKS_PATH": "/buildkite/hooks",
            "BUILDKITE_ADDITIONAL_HOOKS_PATHS": "/buildkite/stackgen-hooks",
            "BUILDKITE_BUILD_PATH": "/buildkite/builds",
        }
        argv: list[str] = ["--add-host", f"{sandbox.GIT_HOST}:{self.git_ip}"]
        argv += ["--tmpfs", "/buildkite/run"]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        # The token as the stack gives it: an environment variable (from a file here).
        token_env = self.root / "agent.env"
        token_env.write_text(f"BUILDKITE_AGENT_TOKEN={self.keys.token}\n")
        argv += ["--env-file", str(token_env)]
        for volume in volumes:
            argv += ["-v", volume]
        name = self._run(
            f"agent-{len(self.containers)}", *argv, self.pins["IMAGE_AGENT"], "start", *args
        )
        if not detach:
            code = docker("wait", name, timeout=300).stdout.strip()
            assert code == "0", docker("logs", name, check=False).stdout[-3000:]
        return name

    def job(self, uuid: str) -> dict[str, Any]:
        import json

        job: dict[str, Any] = json.loads(self.ctl("job", uuid).stdout)
        job["log"] = self.ctl("log", uuid).stdout
        return job


def rig_keys_and_overlay(root: Path) -> tuple[kind.Keys, Path]:
    keys = kind.Keys.generate()
    queues: Sequence[Mapping[str, Any]] = [
        {"name": "rig", "mode": "hpa", "minAgents": 1, "maxAgents": 1}
    ]
    overlay = kind.write_overlay(
        root / "overlay",
        keys,
        queues,
        extra={"metricsAdapter": {"tls": {"insecureSkipTLSVerify": True}}},
    )
    return keys, overlay


def docker_ready() -> str | None:
    """Why the containers cannot run here (None when they can)."""
    if shutil.which("docker") is None or not kind.docker_answers():
        return "a Docker engine (docker info failed)"
    missing = missing_images()
    if missing:
        return f"the images {', '.join(missing)} (bin/setup --kind)"
    return None

"""The locally built images: their pins in bin/versions.env, and the Go code under images/.

The images themselves are built by ``bin/setup --kind`` (root and a Docker engine needed);
these tests check what can be checked without them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    values = {}
    for line in (ROOT / "bin" / "versions.env").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_image_tags_are_local_pinned_and_agree_with_their_sources() -> None:
    v = pins()
    prefix = v["IMAGE_PREFIX"]
    images = {k: val for k, val in v.items() if k.startswith("IMAGE_") and k != "IMAGE_PREFIX"}
    images["KIND_LOCAL_NODE_IMAGE"] = v["KIND_LOCAL_NODE_IMAGE"]
    assert set(images) >= {
        "IMAGE_DEBIAN",
        "IMAGE_STACKGEN",
        "IMAGE_AGENT",
        "IMAGE_GIT_SERVER",
        "IMAGE_DIND",
        "KIND_LOCAL_NODE_IMAGE",
    }
    for key, ref in images.items():
        name, _, tag = ref.rpartition(":")
        assert name.startswith(prefix + "/"), f"{key}={ref} is not under {prefix}/"
        assert tag and tag != "latest", f"{key}={ref} needs a pinned tag"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert v["IMAGE_STACKGEN"].endswith(":" + pyproject["project"]["version"])
    assert v["IMAGE_AGENT"].endswith(":" + v["BUILDKITE_AGENT_VERSION"].removeprefix("v"))
    assert v["IMAGE_DIND"].endswith(":" + v["DIND_DOCKER_VERSION"])
    assert v["KIND_LOCAL_NODE_IMAGE"].endswith(":" + v["KUBERNETES_VERSION"])
    assert re.fullmatch(r"go1\.\d+\.\d+", v["BUILDKITE_AGENT_GOTOOLCHAIN"])


def test_every_image_folder_has_what_bin_setup_expects() -> None:
    for folder in ("debian", "stackgen", "buildkite-agent", "git-server", "dind", "kind-node"):
        packages = ROOT / "images" / folder / "packages"
        assert packages.is_file(), packages
        names = [
            word
            for line in packages.read_text(encoding="utf-8").splitlines()
            for word in line.split("#", 1)[0].split()
        ]
        assert names, f"{packages} lists no packages"
        assert all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", n) for n in names), names
    for folder in ("buildkite-agent", "git-server", "dind", "kind-node"):
        dockerfile = (ROOT / "images" / folder / "Dockerfile").read_text(encoding="utf-8")
        assert "ARG BASE" in dockerfile and "FROM ${BASE}" in dockerfile, folder
    assert "ARG BASE_IMAGE=python:3.11-slim" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


GO_MODULES = ["images/runc-wrapper", "images/buildkite-agent/zzglob", "images/kind-node/pause"]


@pytest.mark.parametrize("module", GO_MODULES)
def test_go_module(module: str) -> None:
    """The runc wrapper, the zzglob stand-in and pause have Go tests of their own."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not installed (bin/setup needs it)")
    proc = subprocess.run(
        [go, "test", "-count=1", "./..."],
        cwd=ROOT / module,
        capture_output=True,
        text=True,
        env={**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"go test in {module}:\n{proc.stdout}\n{proc.stderr}"

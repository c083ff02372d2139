"""A wheel carries bases, components and schemas, so stackgen works outside this repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.paths import ROOT


def test_wheel_builds_the_example_outside_the_repository(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("stackgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "stackgen/_data/bases/agent-pool/agent-horizontalpodautoscaler.yaml",
        "stackgen/_data/components/dind/kustomization.yaml",
        "stackgen/_data/schemas/stack.schema.json",
        "stackgen/templates/init/stack.yaml.j2",
        "stackgen/py.typed",
    ):
        assert expected in names, expected
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    overlay = tmp_path / "elsewhere" / "example"
    shutil.copytree(ROOT / "overlays" / "example", overlay)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "PATH": f"{ROOT / '.tools' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from stackgen.cli import main; main()", "build", str(overlay)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.count(b"\nkind: ") + proc.stdout.startswith(b"kind:") >= 1
    assert b"kind: HorizontalPodAutoscaler" in proc.stdout

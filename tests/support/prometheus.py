"""A real Prometheus server as a local process (built by bin/setup), and PromQL helpers.

:class:`PrometheusServer` scrapes static targets every second, evaluates the given rule
files every second and listens on 127.0.0.1 only; its data lives in a folder the test
owns.  :func:`metric_names` pulls the metric names out of PromQL expressions, and
:func:`exported_names` the names a live ``/metrics`` page exports.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from stackgen import tools
from tests.support.dispatcher_process import free_port

__all__ = ["PrometheusServer", "exported_names", "metric_names"]

#: stackgen's metric names, and ``up`` (Prometheus's own, per target).
_NAME = re.compile(r"\b(stackgen_[a-z0-9_]+|up)\b")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label matchers, whose values name pods, removed)."""
    return set(_NAME.findall(re.sub(r"\{[^}]*\}", "{}", expr)))


def exported_names(text: str) -> set[str]:
    """Every sample name a Prometheus text page can carry (also of families without samples)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            elif kind == "summary":
                names |= {f"{name}_count", f"{name}_sum"}
            elif kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (address -> labels) with ``rule_files`` loaded."""

    def __init__(
        self, folder: Path, targets: dict[str, dict[str, str]], rule_files: list[Path]
    ) -> None:
        binary = tools.which("prometheus")
        assert binary is not None, "prometheus not found: run bin/setup (step `prometheus`)"
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            "global": {
                "scrape_interval": "1s",
                "evaluation_interval": "1s",
                "scrape_timeout": "1s",
            },
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": f"target-{n}",
                    "static_configs": [{"targets": [address], "labels": labels}],
                }
                for n, (address, labels) in enumerate(sorted(targets.items()))
            ],
        }
        config_file = folder / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = folder / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: Any) -> Any:
        answer = httpx.get(f"{self.url}{path}", params=params, timeout=5)
        answer.raise_for_status()
        return answer.json()["data"]

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alerts(self) -> dict[str, list[dict[str, Any]]]:
        """Active alerts by name, each ``{"state": pending|firing, "labels": …}``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for alert in self.get("/api/v1/alerts")["alerts"]:
            out.setdefault(alert["labels"]["alertname"], []).append(alert)
        return out

    def firing(self, name: str) -> bool:
        return any(a["state"] == "firing" for a in self.alerts().get(name, []))

    def rules_loaded(self) -> list[str]:
        groups = self.get("/api/v1/rules")["groups"]
        return [r["name"] for g in groups for r in g["rules"]]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def wait_states(
    server: PrometheusServer, names: list[str], firing: bool, timeout: float, since: float
) -> dict[str, float]:
    """Seconds from ``since`` until each alert is (or is no longer) firing, watched together."""
    deadline = time.monotonic() + timeout
    reached: dict[str, float] = {}
    while time.monotonic() < deadline:
        for name in names:
            if name not in reached and server.firing(name) == firing:
                reached[name] = round(time.time() - since, 1)
        if len(reached) == len(names):
            return reached
        time.sleep(0.5)
    state = "fire" if firing else "resolve"
    late = [n for n in names if n not in reached]
    raise AssertionError(f"{late} did not {state} within {timeout:.0f}s: {server.alerts()}")

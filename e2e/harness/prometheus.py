"""A real Prometheus (built by ``e2e.harness.binaries``) on 127.0.0.1, scraping file-discovered targets.

``Prometheus.start(folder, processes)`` writes a configuration with one scrape job,
``linkerd-proxy``, that scrapes every second the targets listed in ``<folder>/targets.json``
(``file_sd_configs``: Prometheus re-reads the file when it changes), keeps its TSDB in
``<folder>/data`` and listens on a free loopback port. ``set_targets`` rewrites the file
atomically; ``stop``/``start_again`` stop and restart the same server (same port, same data),
as a Prometheus restarting in a cluster would. The process is one of ``processes`` (its log
is ``<logs>/prometheus.log``) and is stopped with them.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import binaries
from e2e.harness.cluster import free_port
from e2e.harness.processes import Processes
from e2e.harness.waits import wait_for

SCRAPE_INTERVAL = "1s"
NAME = "prometheus"


@dataclass(frozen=True)
class Target:
    """One scrape target: ``host:port``, the path to scrape and the labels Prometheus adds to its series."""

    address: str
    path: str
    labels: dict[str, str]


@dataclass
class Prometheus:
    folder: Path
    port: int
    processes: Processes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def targets_file(self) -> Path:
        return self.folder / "targets.json"

    @classmethod
    def start(cls, folder: Path, processes: Processes) -> Prometheus:
        """Write the configuration, start the server and wait until it answers ``/-/ready``."""
        binaries.ensure(binaries.COMPONENTS["prometheus"])
        folder.mkdir(parents=True, exist_ok=True)
        server = cls(folder, free_port(), processes)
        server.set_targets([])
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
            "scrape_configs": [
                {
                    "job_name": "linkerd-proxy",
                    "file_sd_configs": [{"files": [str(server.targets_file)], "refresh_interval": "1s"}],
                }
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        command = [
            str(binaries.program("prometheus")),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{server.port}",
            "--storage.tsdb.retention.time=2h",
            "--log.level=warn",
        ]
        processes.spawn(NAME, command, cwd=folder)
        server.wait_ready()
        return server

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            self.processes.check_running()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for("prometheus /-/ready", ready, timeout=timeout)

    def set_targets(self, targets: list[Target]) -> None:
        """Replace the discovered targets (written to a temporary file, then renamed over the old one)."""
        groups = [
            {"targets": [t.address], "labels": {"__metrics_path__": t.path, **t.labels}}
            for t in sorted(targets, key=lambda t: t.path)
        ]
        staging = self.targets_file.with_suffix(".tmp")
        staging.write_text(json.dumps(groups, indent=1))
        os.replace(staging, self.targets_file)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL): queries are refused until ``start_again``."""
        self.processes.kill(NAME)

    def start_again(self) -> None:
        self.processes.respawn(NAME)
        self.wait_ready()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query (for the tests' own checks)."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(address, timeout=10) as response:  # noqa: S310
            doc = json.loads(response.read())
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def active_targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as response:  # noqa: S310
            active: list[dict[str, Any]] = json.loads(response.read())["data"]["activeTargets"]
        return active

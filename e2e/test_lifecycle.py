"""A second cluster starts from cached binaries and its teardown leaves nothing behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

from e2e.harness import binaries
from e2e.harness.cluster import COMPONENTS, LocalCluster
from e2e.harness.processes import alive


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_second_start_reuses_binaries_and_teardown_leaves_no_process_or_folder(figures: dict[str, str]) -> None:
    """Starting again builds nothing; stopping ends every component and removes the folder."""
    infos = {c.name: (c.dir / "BUILD-INFO.json").stat().st_mtime for c in binaries.COMPONENTS.values() if c.is_built()}
    assert {"etcd", "kubernetes", "kwok"} <= set(infos), "the session cluster should have built these already"

    started = time.monotonic()
    cluster = LocalCluster(nodes=1)
    cluster.start()
    warm_start = time.monotonic() - started
    folder = cluster.root
    pids = dict(cluster.pids)
    try:
        assert set(pids) == set(COMPONENTS)
        assert all(alive(pid) for pid in pids.values())
        assert _processes_mentioning(str(folder)), "components should run with the cluster folder in argv"
        rss = cluster.peak_rss_kib()
    finally:
        cluster.stop()

    assert {
        c.name: (c.dir / "BUILD-INFO.json").stat().st_mtime for c in binaries.COMPONENTS.values() if c.name in infos
    } == infos, "a component was rebuilt"
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert _processes_mentioning(str(folder)) == []
    assert not folder.exists()
    figures["second cluster warm start (1 node)"] = f"{warm_start:.1f}s, peak RSS {rss / 1024:.0f} MiB"

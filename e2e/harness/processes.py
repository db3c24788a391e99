"""Background programs of the e2e world: started in their own process groups, logged to
files, checked while waiting, and stopped for good (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class ProcessError(RuntimeError):
    """A background program exited when it should be running; the message has its log."""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def peak_rss_kib(pids: list[int]) -> int:
    """Sum of the peak resident set sizes (VmHWM) of ``pids``, in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _die_with_parent() -> None:
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class Processes:
    """Named background programs, each logging to ``<log_dir>/<name>.log``.

    Unless ``detach`` is set, each program is killed when the Python process that started
    it dies, so an interrupted test run leaves nothing behind.
    """

    log_dir: Path
    detach: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _commands: dict[str, tuple[list[str], Path | None, dict[str, str] | None]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` of every program's log, for failure reports."""
        out = []
        for name in self.pids:
            path = self.log(name)
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"----- {name} ({path}) -----\n" + "\n".join(tail))
        return "\n".join(out)

    def spawn(self, name: str, cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
        """Start ``cmd`` as ``name``; fail at once if it exits immediately."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log(name).open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=None if self.detach else _die_with_parent,  # noqa: PLW1509 - prctl only
            )
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self._commands[name] = (cmd, cwd, env)
        time.sleep(0.1)
        if proc.poll() is not None:
            raise ProcessError(f"{name} exited at once with {proc.returncode}\n{self.log_tails()}")
        return proc.pid

    def check_running(self) -> None:
        """Raise ProcessError naming the first program that is no longer running."""
        for name, pid in self.pids.items():
            if not alive(pid):
                raise ProcessError(f"{name} (pid {pid}) died; its log: {self.log(name)}\n{self.log_tails()}")

    def peak_rss_kib(self) -> int:
        return peak_rss_kib(list(self.pids.values()))

    def kill(self, name: str, *, grace: float = 10.0) -> None:
        """Stop one program (SIGTERM, then SIGKILL after ``grace``); ``respawn`` starts it again."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pids[name], signal.SIGTERM)
        self._reap(name, time.monotonic() + grace)

    def respawn(self, name: str) -> int:
        """Start ``name`` again with the command, folder and environment it was first started with."""
        cmd, cwd, env = self._commands[name]
        if alive(self.pids[name]):
            raise ProcessError(f"{name} (pid {self.pids[name]}) still runs: kill it first")
        return self.spawn(name, cmd, cwd=cwd, env=env)

    def _reap(self, name: str, deadline: float) -> None:
        """Wait for ``name`` (already sent SIGTERM) to exit until ``deadline``, then SIGKILL its group."""
        pid, proc = self.pids[name], self._procs.get(name)
        while alive(pid) and time.monotonic() < deadline and not (proc is not None and proc.poll() is not None):
            time.sleep(0.05)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop every program, last started first: SIGTERM, then SIGKILL after ``grace``."""
        for pid in reversed(list(self.pids.values())):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name in self.pids:
            self._reap(name, deadline)

"""CLI behaviour that needs no cluster: version, bad input, exit codes."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from upgrader import __version__


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "upgrader", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_version_flag() -> None:
    """--version prints the version and exits 0."""
    out = _run("--version")
    assert (out.returncode, out.stdout.strip()) == (0, f"upgrader {__version__}")


def test_unknown_option_is_bad_input_without_traceback() -> None:
    """An unknown option exits 2 with click's message."""
    out = _run("discover", "--no-such-flag")
    assert out.returncode == 2
    assert "No such option" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_log_level_is_bad_input() -> None:
    """--log-level must be one of the known levels."""
    out = _run("--log-level", "loud", "discover")
    assert out.returncode == 2
    assert "unknown --log-level" in out.stderr


def test_missing_helm_binary_is_bad_input() -> None:
    """A helm binary that cannot be found is named in the error, with exit 2."""
    out = _run("discover", "--helm", "/nonexistent/helm", "--kubeconfig", __file__)
    assert out.returncode == 2, out.stderr
    assert "helm binary '/nonexistent/helm' not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_unreadable_kubeconfig_is_bad_input(tmp_path: pathlib.Path) -> None:
    """A file that is not a kubeconfig gives exit 2 and says which file."""
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    out = _run("discover", "--kubeconfig", str(bad), "--helm", sys.executable)
    assert out.returncode == 2, out.stderr
    assert f"cannot load kubeconfig {bad}" in out.stderr
    assert "Traceback" not in out.stderr

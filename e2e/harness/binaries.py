"""Build the e2e cluster's programs from the Go module proxy and cache them by version.

Nothing here downloads a prebuilt binary: every program is compiled with the local Go
toolchain from modules served by the Go module proxy. Results are cached outside the
repository in ``$UPGRADER_E2E_CACHE`` (default ``~/.cache/upgrader-e2e``), one folder per
component and version (``kubernetes-v1.36.3/``, ``helm-v4.2.4/`` ...). A folder counts as
built only when its ``BUILD-INFO.json`` exists; it is written last, after the binaries were
moved into place, so an interrupted build is simply redone. A file lock serialises
concurrent builders (two pytest sessions, ``make`` and a test run).

Version strings are injected with ``-ldflags`` exactly as the projects' own release builds
do, so ``kubectl version`` and ``helm version`` report real versions (Helm's
``kubeVersion`` checks and pyhelm3's version parsing depend on it).

Run ``python -m e2e.harness.binaries`` to build what is missing and print the paths.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ETCD_VERSION = "v3.6.14"
KUBERNETES_VERSION = "v1.36.3"
KWOK_VERSION = "v0.7.0"
HELM4_VERSION = "v4.2.4"
HELM3_VERSION = "v3.21.4"


class BuildError(RuntimeError):
    """A component could not be built; the message carries the failing command and its log."""


def cache_root() -> Path:
    """Where built binaries live: ``$UPGRADER_E2E_CACHE`` or ``~/.cache/upgrader-e2e``."""
    env = os.environ.get("UPGRADER_E2E_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "upgrader-e2e"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"
    env["GOFLAGS"] = "-buildvcs=false -trimpath"
    env.setdefault("CGO_ENABLED", "0")
    return env


def _run(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env or _go_env(), stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"command failed ({proc.returncode}) in {cwd}: {' '.join(cmd)}\n{tail}")


def _x(flags: dict[str, str]) -> str:
    return " ".join(f"-X '{k}={v}'" for k, v in flags.items())


def _build_date() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _throwaway_module(work: Path, name: str, requires: dict[str, str], replaces: dict[str, str]) -> None:
    lines = [f"module upgrader.local/build/{name}", "", "go 1.26.0", ""]
    lines += ["require ("] + [f"\t{m} {v}" for m, v in requires.items()] + [")", ""]
    if replaces:
        lines += ["replace ("] + [f"\t{m} => {m} {v}" for m, v in replaces.items()] + [")", ""]
    (work / "go.mod").write_text("\n".join(lines))


def _build_etcd(version: str, work: Path, out: Path, log: Path) -> None:
    # etcd's own go.mod has replace directives, so `go install pkg@version` refuses it;
    # a throwaway module that requires the server module builds it unchanged.
    _throwaway_module(work, "etcd", {"go.etcd.io/etcd/server/v3": version}, {})
    _run(["go", "get", f"go.etcd.io/etcd/server/v3@{version}"], work, log)
    _run(["go", "build", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"], work, log)


def _kubernetes_staging(version: str, work: Path, log: Path) -> list[str]:
    with log.open("a") as fh:
        proc = subprocess.run(
            ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            cwd=work,
            env=_go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        fh.write(proc.stderr)
    if proc.returncode != 0:
        raise BuildError(f"go mod download k8s.io/kubernetes@{version} failed:\n{proc.stdout}{proc.stderr}")
    gomod = Path(json.loads(proc.stdout)["GoMod"]).read_text()
    staging = []
    for line in gomod.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            staging.append(parts[0])
    if not staging:
        raise BuildError(f"no staging replaces found in k8s.io/kubernetes@{version}'s go.mod")
    return staging


def _build_kubernetes(version: str, work: Path, out: Path, log: Path) -> None:
    staging_version = "v0" + version[2:]  # v1.36.3 -> v0.36.3
    staging = _kubernetes_staging(version, work, log)
    _throwaway_module(work, "kubernetes", {"k8s.io/kubernetes": version}, {m: staging_version for m in staging})
    major, minor = version.lstrip("v").split(".")[:2]
    flags: dict[str, str] = {}
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags |= {
            f"{pkg}.gitVersion": version,
            f"{pkg}.gitMajor": major,
            f"{pkg}.gitMinor": minor,
            f"{pkg}.gitTreeState": "clean",
            f"{pkg}.gitCommit": "unknown-module-proxy-build",
            f"{pkg}.buildDate": _build_date(),
        }
    cmds = [
        f"k8s.io/kubernetes/cmd/{c}" for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    ]
    _run(["go", "get", *cmds], work, log)
    # One `go build` for all four so they share compiled packages.
    _run(["go", "build", "-ldflags", f"-s -w {_x(flags)}", "-o", str(out) + "/", *cmds], work, log)


def _go_install(pkg: str, ldflags: dict[str, str], out: Path, work: Path, log: Path) -> None:
    env = _go_env() | {"GOBIN": str(out)}
    _run(["go", "install", "-ldflags", f"-s -w {_x(ldflags)}", pkg], work, log, env=env)


def _build_kwok(version: str, work: Path, out: Path, log: Path) -> None:
    _go_install(
        f"sigs.k8s.io/kwok/cmd/kwok@{version}",
        {"sigs.k8s.io/kwok/pkg/consts.Version": version, "sigs.k8s.io/kwok/pkg/consts.KubeVersion": KUBERNETES_VERSION},
        out,
        work,
        log,
    )


def _helm_builder(major: int) -> Callable[[str, Path, Path, Path], None]:
    def build(version: str, work: Path, out: Path, log: Path) -> None:
        base = f"helm.sh/helm/v{major}"
        flags = {
            f"{base}/internal/version.version": version,
            f"{base}/internal/version.gitTreeState": "clean",
            f"{base}/internal/version.gitCommit": "unknown-module-proxy-build",
        }
        if major == 3:
            # Helm 3 otherwise assumes Kubernetes 1.20 in `helm template` and lint; its
            # Makefile derives these from the client-go it builds with (v0.36 -> 1.36).
            k_major, k_minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
            for pkg in (f"{base}/pkg/chartutil", f"{base}/pkg/lint/rules"):
                flags |= {f"{pkg}.k8sVersionMajor": k_major, f"{pkg}.k8sVersionMinor": k_minor}
        _go_install(f"{base}/cmd/helm@{version}", flags, out, work, log)

    return build


@dataclass(frozen=True)
class Component:
    """One cacheable build: a name, a version, the programs it yields and how to build them."""

    name: str
    version: str
    programs: tuple[str, ...]
    builder: Callable[[str, Path, Path, Path], None] = field(compare=False, repr=False)

    @property
    def dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    def path(self, program: str | None = None) -> Path:
        return self.dir / (program or self.programs[0])

    def is_built(self) -> bool:
        return (self.dir / "BUILD-INFO.json").exists() and all((self.dir / p).exists() for p in self.programs)


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("etcd", ETCD_VERSION, ("etcd",), _build_etcd),
        Component("kwok", KWOK_VERSION, ("kwok",), _build_kwok),
        Component("helm", HELM4_VERSION, ("helm",), _helm_builder(4)),
        Component("helm3", HELM3_VERSION, ("helm",), _helm_builder(3)),
        Component(
            "kubernetes",
            KUBERNETES_VERSION,
            ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
            _build_kubernetes,
        ),
    )
}


@contextmanager
def _build_lock() -> Iterator[None]:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".build.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(component: Component, echo: Callable[[str], None] = print) -> float:
    """Build ``component`` unless cached; return seconds spent building (0.0 when cached)."""
    if component.is_built():
        return 0.0
    with _build_lock():
        if component.is_built():  # another builder finished while we waited
            return 0.0
        if shutil.which("go") is None:
            raise BuildError("the Go toolchain is needed to build the e2e cluster: install Go >= 1.26")
        root = cache_root()
        log = root / f"{component.name}-{component.version}.build.log"
        log.write_text("")
        echo(f"building {component.name} {component.version} (log: {log})")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{component.name}-", dir=root) as tmp:
            work, out = Path(tmp) / "work", Path(tmp) / "out"
            work.mkdir()
            out.mkdir()
            component.builder(component.version, work, out, log)
            missing = [p for p in component.programs if not (out / p).exists()]
            if missing:
                raise BuildError(f"{component.name} build produced no {', '.join(missing)} (log: {log})")
            if component.dir.exists():
                shutil.rmtree(component.dir)
            out.rename(component.dir)
        elapsed = time.monotonic() - start
        info = {
            "component": component.name,
            "version": component.version,
            "programs": list(component.programs),
            "built_at": _build_date(),
            "build_seconds": round(elapsed, 1),
            "go": subprocess.run(["go", "version"], capture_output=True, text=True, check=False).stdout.strip(),
        }
        (component.dir / "BUILD-INFO.json").write_text(json.dumps(info, indent=2) + "\n")
        echo(f"built {component.name} {component.version} in {elapsed:.0f}s")
        return elapsed


def ensure_all(names: list[str] | None = None, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Build every named component (all by default) that is not cached yet."""
    return {n: ensure(COMPONENTS[n], echo) for n in (names or list(COMPONENTS))}


def program(name: str, component: str | None = None) -> Path:
    """Path of a built program, e.g. ``program("kubectl")`` or ``program("helm", "helm3")``."""
    for c in COMPONENTS.values():
        if (component is None or c.name == component) and name in c.programs:
            return c.path(name)
    raise KeyError(f"no component builds {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.harness.binaries", description=__doc__.splitlines()[0])
    parser.add_argument("components", nargs="*", help=f"any of {', '.join(COMPONENTS)} (default: all)")
    parser.add_argument("--print-dir", action="store_true", help="only print the cache folder")
    args = parser.parse_args(argv)
    unknown = [c for c in args.components if c not in COMPONENTS]
    if unknown:
        parser.error(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    if args.print_dir:
        print(cache_root())
        return 0
    try:
        spent = ensure_all(args.components or None, echo=lambda m: print(m, file=sys.stderr, flush=True))
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in args.components or COMPONENTS:
        c = COMPONENTS[name]
        state = f"built in {spent[name]:.0f}s" if spent[name] else "cached"
        print(f"{c.name:<11} {c.version:<8} {state:<16} {c.dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

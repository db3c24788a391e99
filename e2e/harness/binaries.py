"""Build the e2e cluster's programs from the Go module proxy, locked, and cache them.

Nothing here downloads a prebuilt binary: every program is compiled with the local Go
toolchain from modules served by the Go module proxy. Each component's whole dependency
graph is locked in the repository, a ``go.mod`` and ``go.sum`` per component under
``e2e/harness/go/<component>/``, and builds run with ``-mod=readonly``: nothing floats to a
newer release and every download is checked against the committed sums.

The pins are the ``*_VERSION`` constants below. Bumping one is a one-line change plus

    python -m e2e.harness.binaries lock <component>      # or `make lock`

which regenerates that component's lock (it needs the module proxy). A pin that
disagrees with its lock stops the build and names that command.

Results are cached outside the repository in ``$UPGRADER_E2E_CACHE`` (default
``~/.cache/upgrader-e2e``), one folder per component, version and lock
(``kubernetes-v1.36.3-<lock digest>/``), so a new lock never reuses an old build. A folder
counts as built only when its ``BUILD-INFO.json`` exists; it is written last, after the
binaries were checked and moved into place, so an interrupted build is simply redone. A
file lock serialises concurrent builders (two pytest sessions, ``make`` and a test run).

After a build, and every time a cached build is used (``make test`` does), each program's
embedded module information (``go version -m``) is checked against the lock: the pinned
module at the pinned version and every dependency at its locked version and hash. A
mismatch is a build error naming the component, the wanted and the found version.

Version strings are injected with ``-ldflags`` exactly as the projects' own release builds
do, so ``kubectl version`` and ``helm version`` report real versions (Helm's
``kubeVersion`` checks and pyhelm3's version parsing depend on it).

Run ``python -m e2e.harness.binaries`` to build what is missing, check what is cached and
print the paths.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
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
PROMETHEUS_VERSION = "v0.316.0"  # the module's tag for Prometheus 3.16.0

LOCKS_DIR = Path(__file__).resolve().parent / "go"
LOCK_COMMAND = "python -m e2e.harness.binaries lock"
GO_LINE = "go 1.26.0"


class BuildError(RuntimeError):
    """A component could not be built; the message carries the failing command and its log."""


def cache_root() -> Path:
    """Where built binaries live: ``$UPGRADER_E2E_CACHE`` or ``~/.cache/upgrader-e2e``."""
    env = os.environ.get("UPGRADER_E2E_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "upgrader-e2e"


def _go_env(*, readonly: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"
    env["GOFLAGS"] = "-buildvcs=false -trimpath" + (" -mod=readonly" if readonly else "")
    env.setdefault("CGO_ENABLED", "0")
    return env


def _run(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env or _go_env(), stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        text = log.read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-30:])
        hint = ""
        if "go.sum" in text or "updates to go.mod needed" in text:
            hint = f"\nthe committed lock does not cover this build: run `{LOCK_COMMAND}` and commit the result"
        raise BuildError(f"command failed ({proc.returncode}) in {cwd}: {' '.join(cmd)}\n{tail}\n(log: {log}){hint}")


def _x(flags: dict[str, str]) -> str:
    return " ".join(f"-X '{k}={v}'" for k, v in flags.items())


def _build_date() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kubernetes_flags(version: str) -> dict[str, str]:
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
    return flags


def _kwok_flags(version: str) -> dict[str, str]:
    return {
        "sigs.k8s.io/kwok/pkg/consts.Version": version,
        "sigs.k8s.io/kwok/pkg/consts.KubeVersion": KUBERNETES_VERSION,
    }


def _helm_flags(major: int) -> Callable[[str], dict[str, str]]:
    def flags(version: str) -> dict[str, str]:
        base = f"helm.sh/helm/v{major}"
        out = {
            f"{base}/internal/version.version": version,
            f"{base}/internal/version.gitTreeState": "clean",
            f"{base}/internal/version.gitCommit": "unknown-module-proxy-build",
        }
        if major == 3:
            # Helm 3 otherwise assumes Kubernetes 1.20 in `helm template` and lint; its
            # Makefile derives these from the client-go it builds with (v0.36 -> 1.36).
            k_major, k_minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
            for pkg in (f"{base}/pkg/chartutil", f"{base}/pkg/lint/rules"):
                out |= {f"{pkg}.k8sVersionMajor": k_major, f"{pkg}.k8sVersionMinor": k_minor}
        return out

    return flags


def _prometheus_flags(version: str) -> dict[str, str]:
    # Prometheus 3.x tags its Go module v0.3MM.P for release 3.MM.P (its build_info reports it).
    minor, patch = version.lstrip("v").split(".")[1:3]
    base = "github.com/prometheus/common/version"
    return {
        f"{base}.Version": f"{minor[0]}.{int(minor[1:])}.{patch}",
        f"{base}.Revision": "unknown-module-proxy-build",
        f"{base}.Branch": "HEAD",
        f"{base}.BuildUser": "upgrader-e2e",
        f"{base}.BuildDate": _build_date(),
    }


def _no_flags(_version: str) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Component:
    """One locked, cacheable build: the pinned module, the packages it yields and their flags.

    ``packages`` maps each program's file name to its Go package. ``staging`` says the
    module needs Kubernetes' staging replaces (``k8s.io/<staging> => v0.X.Y``) in its lock.
    ``tags`` are the Go build tags of the build (the lock covers every tag: ``go mod tidy``).
    """

    name: str
    module: str
    version: str
    packages: dict[str, str] = field(compare=False)
    ldflags: Callable[[str], dict[str, str]] = field(default=_no_flags, compare=False, repr=False)
    staging: bool = False
    tags: tuple[str, ...] = ()

    @property
    def programs(self) -> tuple[str, ...]:
        return tuple(self.packages)

    @property
    def lock_dir(self) -> Path:
        return LOCKS_DIR / self.name

    def lock_digest(self) -> str:
        """A short digest of the committed lock (and the build tags, if any): part of the cache key."""
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            path = self.lock_dir / name
            digest.update(path.read_bytes() if path.exists() else b"")
        if self.tags:  # a build with other tags is another build
            digest.update(("tags:" + ",".join(self.tags)).encode())
        return digest.hexdigest()[:10]

    @property
    def dir(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}-{self.lock_digest()}"

    def path(self, program: str | None = None) -> Path:
        return self.dir / (program or self.programs[0])

    def is_built(self) -> bool:
        return (self.dir / "BUILD-INFO.json").exists() and all((self.dir / p).exists() for p in self.programs)


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        # etcd's own go.mod has replace directives, so `go install pkg@version` refuses it;
        # a module of ours that requires the server module builds it unchanged.
        Component("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, {"etcd": "go.etcd.io/etcd/server/v3"}),
        Component("kwok", "sigs.k8s.io/kwok", KWOK_VERSION, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}, _kwok_flags),
        Component("helm", "helm.sh/helm/v4", HELM4_VERSION, {"helm": "helm.sh/helm/v4/cmd/helm"}, _helm_flags(4)),
        Component("helm3", "helm.sh/helm/v3", HELM3_VERSION, {"helm": "helm.sh/helm/v3/cmd/helm"}, _helm_flags(3)),
        Component(
            "kubernetes",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            {c: f"k8s.io/kubernetes/cmd/{c}" for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")}
            | {"kubectl": "k8s.io/kubernetes/cmd/kubectl"},
            _kubernetes_flags,
            staging=True,
        ),
        # Without the web UI's assets (no `builtinassets` tag: the UI would be read from disk, and
        # nothing asks for it) and with only the file and HTTP service discovery that
        # plugins/minimum.go always registers (`remove_all_sd` drops every other plugin).
        Component(
            "prometheus",
            "github.com/prometheus/prometheus",
            PROMETHEUS_VERSION,
            {"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
            _prometheus_flags,
            tags=("remove_all_sd",),
        ),
    )
}


# --- locks -------------------------------------------------------------------------------


def lock_requires(gomod: str) -> dict[str, str]:
    """The ``require`` entries of a go.mod (module -> version), ignoring replaces and tools."""
    return dict(entry.split()[:2] for entry in lock_directives(gomod, "require") if len(entry.split()) >= 2)


def lock_directives(gomod: str, verb: str) -> list[str]:
    """The arguments of one go.mod directive, single-line or block (``tool``, ``require`` ...)."""
    found: list[str] = []
    block = False
    for line in gomod.splitlines():
        stripped = line.split("//", 1)[0].strip()
        if stripped == f"{verb} (":
            block = True
        elif block and stripped == ")":
            block = False
        elif block and stripped:
            found.append(stripped)
        elif stripped.startswith(f"{verb} "):
            found.append(stripped[len(verb) + 1 :].strip())
    return found


def lock_sums(gosum: str) -> dict[tuple[str, str], str]:
    """The module hashes of a go.sum: (module, version) -> ``h1:`` hash (``/go.mod`` lines left out)."""
    sums: dict[tuple[str, str], str] = {}
    for line in gosum.splitlines():
        parts = line.split()
        if len(parts) == 3 and not parts[1].endswith("/go.mod"):
            sums[(parts[0], parts[1])] = parts[2]
    return sums


def check_lock(component: Component) -> None:
    """The committed lock exists and locks the pinned version; otherwise say which command to run."""
    gomod, gosum = component.lock_dir / "go.mod", component.lock_dir / "go.sum"
    fix = f"run `{LOCK_COMMAND} {component.name}` (needs the Go module proxy) and commit {component.lock_dir}"
    if not gomod.exists() or not gosum.exists():
        raise BuildError(f"{component.name}: no lock in {component.lock_dir} (go.mod and go.sum): {fix}")
    locked = lock_requires(gomod.read_text()).get(component.module)
    if locked != component.version:
        raise BuildError(
            f"{component.name}: pinned to {component.module} {component.version} but its lock "
            f"{gomod} has {locked or 'no requirement'}: {fix}"
        )
    if (component.module, component.version) not in lock_sums(gosum.read_text()):
        raise BuildError(f"{component.name}: {gosum} has no sum for {component.module} {component.version}: {fix}")
    tools = lock_directives(gomod.read_text(), "tool")
    missing = [p for p in component.packages.values() if p not in tools]
    if missing:
        raise BuildError(f"{component.name}: {gomod} lists no tool {', '.join(missing)}: {fix}")


def _staging_modules(version: str, work: Path, log: Path) -> list[str]:
    """Kubernetes' staging modules: the ``./staging/...`` replaces of k8s.io/kubernetes's go.mod."""
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=work,
        env=_go_env(readonly=False),
        capture_output=True,
        text=True,
        check=False,
    )
    with log.open("a") as fh:
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


def lock(component: Component, echo: Callable[[str], None] = print) -> Path:
    """Regenerate ``component``'s go.mod and go.sum from its pin (needs the Go module proxy)."""
    with tempfile.TemporaryDirectory(prefix=f"lock-{component.name}-") as tmp:
        work = Path(tmp)
        log = work / "lock.log"
        lines = [f"module upgrader.local/build/{component.name}", "", GO_LINE, ""]
        if component.staging:
            staging_version = "v0" + component.version[2:]  # v1.36.3 -> v0.36.3
            modules = _staging_modules(component.version, work, log)
            lines += ["replace ("] + [f"\t{m} => {m} {staging_version}" for m in modules] + [")", ""]
        (work / "go.mod").write_text("\n".join(lines))
        env = _go_env(readonly=False)
        pkgs = [f"{p}@{component.version}" for p in component.packages.values()]
        try:
            _run(["go", "get", "-tool", *pkgs], work, log, env=env)
            _run(["go", "mod", "tidy"], work, log, env=env)
        except BuildError as exc:
            raise BuildError(f"locking {component.name}: {exc}") from None
        component.lock_dir.mkdir(parents=True, exist_ok=True)
        for name in ("go.mod", "go.sum"):
            shutil.copyfile(work / name, component.lock_dir / name)
    check_lock(component)
    echo(f"locked {component.name} {component.module} {component.version} in {component.lock_dir}")
    return component.lock_dir


# --- verification ------------------------------------------------------------------------


def embedded_modules(binary: Path) -> dict[str, object]:
    """``go version -m``: the program's package, main module and dependencies (after replaces)."""
    proc = subprocess.run(["go", "version", "-m", str(binary)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"`go version -m {binary}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    info: dict[str, object] = {"path": None, "mod": None}
    deps: dict[str, tuple[str, str]] = {}
    last = ""
    for line in proc.stdout.splitlines()[1:]:
        parts = line.strip().split("\t")
        if parts[0] == "path":
            info["path"] = parts[1]
        elif parts[0] == "mod":
            # The module holding the main package: ours, or the pinned module itself when the
            # program lives in it (go version -m lists it here, not among the deps).
            info["mod"] = parts[1]
            if len(parts) > 2 and parts[2] != "(devel)":
                last = parts[1]
                deps[last] = (parts[2], parts[3] if len(parts) > 3 else "")
        elif parts[0] == "dep":
            last = parts[1]
            deps[last] = (parts[2], parts[3] if len(parts) > 3 else "")
        elif parts[0] == "=>" and last:
            deps[last] = (parts[2], parts[3] if len(parts) > 3 else "")
    info["deps"] = deps
    return info


def verify(component: Component, folder: Path) -> None:
    """Each built program embeds the pinned module and exactly the locked dependencies."""
    sums = lock_sums((component.lock_dir / "go.sum").read_text())
    for program, package in component.packages.items():
        binary = folder / program
        info = embedded_modules(binary)
        deps = info["deps"]
        assert isinstance(deps, dict)
        if info["path"] != package:
            raise BuildError(f"{component.name}: {binary} is {info['path']}, wanted {package}")
        found = deps.get(component.module, ("none", ""))[0]
        if found != component.version:
            raise BuildError(
                f"{component.name}: {binary} embeds {component.module} {found}, wanted {component.version} "
                f"(remove {folder} to rebuild it)"
            )
        for module, (version, digest) in sorted(deps.items()):
            locked = sums.get((module, version))
            if locked is None or (digest and digest != locked):
                wanted = sorted(v for (m, v) in sums if m == module) or ["nothing"]
                raise BuildError(
                    f"{component.name}: {binary} embeds {module} {version}, wanted {', '.join(wanted)} "
                    f"(the lock in {component.lock_dir}; remove {folder} to rebuild it)"
                )


# --- builds --------------------------------------------------------------------------------


def _build(component: Component, work: Path, out: Path, log: Path) -> None:
    for name in ("go.mod", "go.sum"):
        shutil.copyfile(component.lock_dir / name, work / name)
    flags = _x(component.ldflags(component.version))
    packages = list(component.packages.values())
    # One `go build` for all programs of a component, so they share compiled packages
    # (their file names are their packages' last path elements then).
    target = str(out / component.programs[0]) if len(packages) == 1 else str(out) + "/"
    ldflags = f"-s -w {flags}".strip()
    tags = ["-tags", ",".join(component.tags)] if component.tags else []
    _run(["go", "build", "-mod=readonly", *tags, "-ldflags", ldflags, "-o", target, *packages], work, log)


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


Builder = Callable[[Component, Path, Path, Path], None]  # (component, work, out, log)
Verifier = Callable[[Component, Path], None]  # (component, folder with its programs)


def ensure(
    component: Component,
    echo: Callable[[str], None] = print,
    *,
    build: Builder | None = None,
    check: Verifier | None = None,
) -> float:
    """Build ``component`` unless cached; check it against its lock; return seconds spent building."""
    build, check = build or _build, check or verify
    check_lock(component)
    if shutil.which("go") is None:
        raise BuildError("the Go toolchain is needed to build the e2e cluster: install Go >= 1.26")
    if component.is_built():
        check(component, component.dir)
        return 0.0
    with _build_lock():
        if component.is_built():  # another builder finished while we waited
            check(component, component.dir)
            return 0.0
        root = cache_root()
        log = root / f"{component.name}-{component.version}.build.log"
        log.write_text("")
        echo(f"building {component.name} {component.version} (log: {log})")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f".{component.name}-", dir=root) as tmp:
            work, out = Path(tmp) / "work", Path(tmp) / "out"
            work.mkdir()
            out.mkdir()
            build(component, work, out, log)
            missing = [p for p in component.programs if not (out / p).exists()]
            if missing:
                raise BuildError(f"{component.name} build produced no {', '.join(missing)} (log: {log})")
            check(component, out)
            if component.dir.exists():
                shutil.rmtree(component.dir)
            out.rename(component.dir)
        elapsed = time.monotonic() - start
        info = {
            "component": component.name,
            "module": component.module,
            "version": component.version,
            "lock": component.lock_digest(),
            "programs": list(component.programs),
            "tags": list(component.tags),
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
    argv = list(sys.argv[1:] if argv is None else argv)
    locking = bool(argv) and argv[0] == "lock"
    parser = argparse.ArgumentParser(
        prog="python -m e2e.harness.binaries" + (" lock" if locking else ""),
        description="Regenerate the committed go.mod/go.sum of components from their pins."
        if locking
        else __doc__.splitlines()[0],
    )
    parser.add_argument("components", nargs="*", help=f"any of {', '.join(COMPONENTS)} (default: all)")
    if not locking:
        parser.add_argument("--print-dir", action="store_true", help="only print the cache folder")
    args = parser.parse_args(argv[1:] if locking else argv)
    unknown = [c for c in args.components if c not in COMPONENTS]
    if unknown:
        parser.error(f"unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    names = args.components or list(COMPONENTS)
    echo = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if locking:
        try:
            for name in names:
                lock(COMPONENTS[name], echo)
        except BuildError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.print_dir:
        print(cache_root())
        return 0
    try:
        spent = ensure_all(names, echo=echo)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in names:
        c = COMPONENTS[name]
        state = f"built in {spent[name]:.0f}s" if spent[name] else "cached, checked"
        print(f"{c.name:<11} {c.version:<8} {state:<16} {c.dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

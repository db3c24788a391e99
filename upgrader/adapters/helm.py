"""HelmPort over pyhelm3 and a real helm binary (helm 4 or helm 3).

pyhelm3's ``Command`` runs helm with values on stdin and JSON output and maps stderr to
exception classes; we use it as our runner and keep its ``Client`` (which both decides and
acts) out of the way. ``install`` and ``upgrade`` are separate on purpose: an upgrade never
passes ``--install``, so a release that is not there is never created by accident.

helm's stderr becomes a typed error in ``upgrader.adapters.errors.classify`` (a locked release,
a missing release or chart, a refusal, a passing API failure). Reads and ``rollback`` are
retried on passing failures; ``install`` and ``upgrade`` are not (``ClusterPorts.upgrade``
retries an upgrade only after looking whether the lost attempt landed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pyhelm3
import yaml
from pyhelm3 import errors as helm_errors

from upgrader.adapters.errors import classify
from upgrader.adapters.retrying import retried
from upgrader.discovery import split_chart
from upgrader.errors import ChartNotFoundError, ClusterUnreachableError
from upgrader.ports import HelmRelease, HelmRevision, ReleaseObject

T = TypeVar("T")

_log = logging.getLogger("pyhelm3.command")  # quiet below --log-level debug, as pyhelm3's own runner was


def _revisions(rows: list[dict[str, Any]]) -> list[HelmRevision]:
    return [
        HelmRevision(
            revision=int(r["revision"]),
            status=r["status"],
            chart=r["chart"],
            app_version=r.get("app_version", ""),
            description=r.get("description", ""),
        )
        for r in rows
    ]


class _Command(pyhelm3.Command):  # type: ignore[misc]  # pyhelm3 ships no types
    """pyhelm3's commands, run without a shell, plus global flags it has no parameter for (impersonation).

    pyhelm3's own ``run`` joins the command into one string for ``/bin/sh``; ours hands helm
    its arguments as a list (``exec``), so no release name, namespace or path is ever read by a
    shell. Values go on stdin, the cluster as a kubeconfig path; never a token.
    """

    def __init__(self, *, extra: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._extra = extra

    def argv(self, command: list[Any]) -> list[str]:
        argv = [str(self._executable), *(str(part) for part in command), *self._extra]
        if self._kubeconfig:
            argv += ["--kubeconfig", str(self._kubeconfig)]
        if self._kubecontext:
            argv += ["--kube-context", str(self._kubecontext)]
        return argv

    async def run(self, command: list[Any], input: bytes | None = None) -> bytes:
        argv = self.argv(command)
        _log.debug("running helm %s", " ".join(argv[1:3]))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else None,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:  # the helm binary is missing or not executable: helm's own "not found" words
            raise helm_errors.Error(127, b"", f"{argv[0]}: {exc.strerror}".encode()) from exc
        try:
            stdout, stderr = await proc.communicate(input)
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
                await proc.communicate()
            raise
        if proc.returncode != 0:
            raise helm_errors.Error(proc.returncode, stdout, stderr)  # classify() reads helm's stderr
        return stdout


class HelmAdapter:
    """One helm binary bound to one kubeconfig/context."""

    def __init__(
        self,
        *,
        executable: str = "helm",
        kubeconfig: Path | None = None,
        context: str | None = None,
        timeout: str = "5m",
        history_max: int = 10,
        impersonate: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        command: Any = None,
    ) -> None:
        """``command`` replaces pyhelm3's runner (tests); ``sleep`` is what retries wait with."""
        self._command = command or _Command(
            extra=["--kube-as-user", impersonate] if impersonate else [],
            executable=executable,
            kubeconfig=kubeconfig,
            kubecontext=context,
            default_timeout=timeout,
            history_max_revisions=history_max,
        )
        self._sleep = sleep
        self._timeout = timeout
        self._history_max = history_max
        self._major: int | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return asyncio.run(coro)
        except helm_errors.Error as exc:
            raise classify(exc.stderr.decode(errors="replace") or str(exc)) from exc

    @retried
    def version(self) -> str:
        version: str = self._call(self._command.version())
        return version.strip()

    def major(self) -> int:
        if self._major is None:
            self._major = int(self.version().lstrip("v").split(".")[0])
        return self._major

    @retried
    def list_releases(self) -> list[HelmRelease]:
        # helm 3 needs --all to include pending/failed releases; helm 4 lists every state by
        # default and has no --all (and --deployed, pyhelm3's default, would filter).
        if self.major() >= 4:
            listing = self._command.list(all_namespaces=True, include_deployed=False)
        else:
            listing = self._command.list(all=True, all_namespaces=True)
        return [_release(r) for r in self._call(listing)]

    @retried
    def search_repo(self, repo: str, chart: str) -> list[tuple[str, str]] | None:
        """(chart version, app version) of every version of ``repo/chart``; None if the repo is not added."""
        try:
            out = self._call(
                self._command.run(["search", "repo", f"{repo}/{chart}", "--versions", "--devel", "--output", "json"])
            )
        except ChartNotFoundError:  # no repositories, or none named ``repo``
            return None
        rows = json.loads(out or b"[]")
        return [(r["version"], r.get("app_version", "")) for r in rows if r["name"] == f"{repo}/{chart}"]

    @retried
    def template(self, chart: str, version: str, namespace: str, values: dict[str, Any]) -> str:
        """Render ``chart`` (``repo/name`` or a path) at ``version`` offline with ``values`` (on stdin)."""
        args = [
            "template",
            chart.rsplit("/", 1)[-1],
            chart,
            "--version",
            version,
            "--namespace",
            namespace,
            "--values",
            "-",
        ]
        out: bytes = self._call(self._command.run(args, json.dumps(values).encode()))
        return out.decode()

    @retried
    def show_values(self, chart: str, version: str) -> dict[str, Any]:
        """The default values of ``chart`` at ``version``."""
        out: bytes = self._call(self._command.run(["show", "values", chart, "--version", version]))
        loaded = yaml.safe_load(out) or {}
        return loaded if isinstance(loaded, dict) else {}

    @retried
    def chart_file(self, chart: str, version: str, name: str) -> str | None:
        """The text of file ``name`` shipped inside ``chart`` at ``version`` (e.g. ``values-ha.yaml``); None if absent.

        ``helm pull --untar`` into a temporary folder: ``helm show`` has no command for other files.
        """
        with tempfile.TemporaryDirectory(prefix="upgrader-chart-") as folder:
            self._call(self._command.run(["pull", chart, "--version", version, "--untar", "--untardir", folder]))
            root = Path(folder)
            for top in sorted(p for p in root.iterdir() if p.is_dir()):
                path = top / name
                if path.resolve().is_relative_to(top.resolve()) and path.is_file():
                    return path.read_text()
        return None

    @retried
    def history(self, release: str, namespace: str) -> list[HelmRevision]:
        return _revisions(self._call(self._command.history(release, namespace=namespace)))

    def history_once(self, release: str, namespace: str, *, timeout: float = 10.0) -> list[HelmRevision]:
        """``helm history`` tried once, outside the retry policy, ended (helm killed) after ``timeout`` seconds.

        For a quick look that may fail (``status`` comparing a run with helm): an unreachable cluster
        costs ``timeout`` at most, not five attempts of a 30 s dial each.
        """

        async def bounded() -> Any:
            return await asyncio.wait_for(self._command.history(release, namespace=namespace), timeout)

        try:
            return _revisions(self._call(bounded()))
        except TimeoutError as exc:
            raise ClusterUnreachableError(
                f"helm history {release} -n {namespace} did not answer within {timeout:g} s",
                hint="check that the cluster is up and that --kubeconfig/--context point at it",
            ) from exc

    @retried
    def get_values(
        self, release: str, namespace: str, *, all_values: bool = False, revision: int | None = None
    ) -> dict[str, Any]:
        """``helm get values`` (``--all``: computed; ``--revision N``: that revision's, e.g. the last deployed)."""
        values: dict[str, Any] = self._call(
            self._command.get_values(release, computed=all_values, namespace=namespace, revision=revision)
        )
        return values

    @retried
    def status(self, release: str, namespace: str) -> HelmRelease:
        """The current revision. From `helm history`: `helm status -o json` carries no chart."""
        rows = self._call(self._command.history(release, max_revisions=1, namespace=namespace))
        return _release({**rows[-1], "name": release, "namespace": namespace})

    def install(
        self,
        release: str,
        chart: str | Path,
        namespace: str,
        values: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        repo: str | None = None,
        wait: bool = True,
        create_namespace: bool = False,
    ) -> HelmRelease:
        args = ["install", release, str(chart), *self._common(namespace, version, repo, wait)]
        if create_namespace:
            args.append("--create-namespace")
        return self._apply(args, values)

    def upgrade(
        self,
        release: str,
        chart: str | Path,
        namespace: str,
        values: dict[str, Any] | None = None,
        *,
        version: str | None = None,
        repo: str | None = None,
        wait: bool = True,
        reset_values: bool = False,
        reuse_values: bool = False,
        dry_run: bool = False,
    ) -> HelmRelease:
        args = ["upgrade", release, str(chart), *self._common(namespace, version, repo, wait and not dry_run)]
        if dry_run:
            args.append("--dry-run=server")
        args += ["--history-max", str(self._history_max)]
        if reset_values:
            args.append("--reset-values")
        if reuse_values:
            args.append("--reuse-values")
        return self._apply(args, values)

    @retried
    def rollback(self, release: str, namespace: str, revision: int, *, wait: bool = True) -> None:
        self._call(self._command.rollback(release, revision, namespace=namespace, wait=wait, timeout=self._timeout))

    @retried
    def manifest(self, release: str, namespace: str) -> list[ReleaseObject]:
        """The objects of a release's current manifest (``helm get manifest``)."""
        out = self._call(self._command.run(["get", "manifest", release, "--namespace", namespace]))
        return manifest_objects(out.decode(errors="replace"))

    def chart_objects(self, chart: str, version: str, namespace: str, values: dict[str, Any]) -> list[ReleaseObject]:
        """The objects ``chart`` at ``version`` renders with ``values`` (``helm template``)."""
        return manifest_objects(self.template(chart, version, namespace, values))

    def uninstall(self, release: str, namespace: str, *, wait: bool = True) -> None:
        self._call(self._command.uninstall(release, namespace=namespace, wait=wait, timeout=self._timeout))

    def _common(self, namespace: str, version: str | None, repo: str | None, wait: bool) -> list[str]:
        args = ["--namespace", namespace, "--timeout", self._timeout, "--output", "json", "--values", "-"]
        if version:
            args += ["--version", version]
        if repo:
            args += ["--repo", repo]
        if wait:
            args.append("--wait")
        return args

    def _apply(self, args: list[str], values: dict[str, Any] | None) -> HelmRelease:
        out = self._call(self._command.run(list(args), json.dumps(values or {}).encode()))
        data = json.loads(out[out.index(b"{") :])
        return _from_status(data)


def manifest_objects(text: str) -> list[ReleaseObject]:
    """The objects of a rendered manifest (kind, name, namespace when it says one)."""
    objects = []
    for doc in yaml.safe_load_all(text):
        if not isinstance(doc, dict) or not doc.get("kind"):
            continue
        meta = doc.get("metadata") or {}
        objects.append(
            ReleaseObject(
                str(doc.get("apiVersion", "")),
                str(doc["kind"]),
                str(meta.get("name", "")),
                meta.get("namespace") or None,
            )
        )
    return objects


def _release(row: dict[str, Any]) -> HelmRelease:
    name, version = split_chart(row["chart"])
    return HelmRelease(
        name=row["name"],
        namespace=row["namespace"],
        revision=int(row["revision"]),
        status=row["status"],
        chart_name=name,
        chart_version=version,
        app_version=row.get("app_version", ""),
    )


def _from_status(data: dict[str, Any]) -> HelmRelease:
    """A release from the JSON of `helm status|install|upgrade -o json`."""
    meta = data.get("chart", {}).get("metadata", {})
    return HelmRelease(
        name=data["name"],
        namespace=data["namespace"],
        revision=int(data["version"]),
        status=data["info"]["status"],
        chart_name=meta.get("name", ""),
        chart_version=meta.get("version", ""),
        app_version=meta.get("appVersion", ""),
    )

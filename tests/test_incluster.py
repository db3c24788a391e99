"""Running inside the cluster: the Job and CronJob manifests, the chart's RBAC rules (generated from the
permission table), the Containerfile's pins, user and entrypoint, and a Job's own-lock take-over."""

from __future__ import annotations

import datetime as dt
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from e2e.harness import binaries
from upgrader import incluster
from upgrader.cli import app
from upgrader.errors import InputError
from upgrader.locking import LeaseView, decide
from upgrader.permissions import PROBE_NAMESPACE, REQUIRED, Scope, rbac_rules

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "chart"
RULES_FILE = CHART / "files" / "rbac-rules.yaml"
CONTAINERFILE = ROOT / "Containerfile"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _job(**kw: Any) -> dict[str, Any]:
    given: dict[str, Any] = {
        "name": "upgrade-linkerd",
        "namespace": "upgrader",
        "image": "registry.example/upgrader@sha256:" + "a" * 64,
        "target": "stable-2.14.10",
        "spec_config_map": "upgrader-spec",
    }
    return incluster.job_manifest(**(given | kw))


def _container(job: dict[str, Any], name: str = "upgrader") -> dict[str, Any]:
    pod = job["spec"]["template"]["spec"]
    found: dict[str, Any] = next(c for c in [*pod["containers"], *pod.get("initContainers", [])] if c["name"] == name)
    return found


# ---- the Job ---------------------------------------------------------------------------------------------


def test_job_runs_apply_with_the_run_named_after_the_job_and_its_state_in_the_cluster() -> None:
    """The container runs `upgrader apply --to` with the spec from the ConfigMap, a kubernetes: store and --run-id."""
    job = _job(state_namespace="upgrader-state")
    assert job["apiVersion"] == "batch/v1"
    assert job["kind"] == "Job"
    assert job["metadata"] == {
        "name": "upgrade-linkerd",
        "namespace": "upgrader",
        "labels": {"app.kubernetes.io/name": "upgrader", "app.kubernetes.io/instance": "upgrade-linkerd"},
        "annotations": {"upgrader.io/run-id": "upgrade-linkerd", "upgrader.io/target": "stable-2.14.10"},
    }
    assert _container(job)["args"] == [
        "--log-format",
        "json",
        "apply",
        "--to",
        "stable-2.14.10",
        "--spec",
        "/etc/upgrader/spec.yaml",
        "--yes",
        "--state-store",
        "kubernetes:upgrader-state",
        "--run-id",
        "upgrade-linkerd",
        "--take-over-lock",
    ]
    assert "command" not in _container(job), "the image's entrypoint (upgrader) runs"
    assert _container(job)["image"] == "registry.example/upgrader@sha256:" + "a" * 64


def test_job_state_store_defaults_to_the_jobs_namespace() -> None:
    """Without state_namespace, the checkpoints go to the Job's own namespace."""
    args = _container(_job())["args"]
    assert args[args.index("--state-store") + 1] == "kubernetes:upgrader"


def test_job_mounts_the_spec_config_map_read_only_at_the_spec_path() -> None:
    """The ConfigMap's spec.yaml is the file --spec names."""
    job = _job()
    pod = job["spec"]["template"]["spec"]
    assert {
        "name": "spec",
        "configMap": {"name": "upgrader-spec", "items": [{"key": "spec.yaml", "path": "spec.yaml"}]},
    } in pod["volumes"]
    mount = next(m for m in _container(job)["volumeMounts"] if m["name"] == "spec")
    assert mount == {"name": "spec", "mountPath": "/etc/upgrader", "readOnly": True}
    assert f"{mount['mountPath']}/spec.yaml" == incluster.SPEC_PATH


def test_job_with_a_spec_secret_mounts_the_secret_instead() -> None:
    """A spec holding secrets comes from a Secret; giving both is bad input."""
    job = _job(spec_config_map=None, spec_secret="upgrader-spec")  # noqa: S106 - a Secret's name
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "spec",
        "secret": {"secretName": "upgrader-spec", "items": [{"key": "spec.yaml", "path": "spec.yaml"}]},
    } in volumes
    with pytest.raises(InputError, match="not both"):
        _job(spec_secret="upgrader-spec")  # noqa: S106 - a Secret's name


def test_job_without_a_spec_passes_no_spec_option() -> None:
    """No ConfigMap or Secret: no --spec and no spec volume."""
    job = _job(spec_config_map=None)
    assert "--spec" not in _container(job)["args"]
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["work"]


def test_job_pod_runs_as_non_root_with_a_read_only_root_under_its_service_account() -> None:
    """Non-root numeric user, no privilege escalation, no capabilities, RuntimeDefault seccomp, the named SA."""
    job = _job(service_account="linkerd-upgrader")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "linkerd-upgrader"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == incluster.RUN_AS_USER != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod["containers"], *pod["initContainers"]]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert {"name": "work", "mountPath": incluster.WORK_DIR} in container["volumeMounts"]
        assert {"name": "HOME", "value": incluster.WORK_DIR} in container["env"]


def test_job_retries_with_backoff_and_replaces_a_pod_only_once_it_stopped() -> None:
    """restartPolicy Never, backoffLimit (6 or given), podReplacementPolicy Failed; deadlines only when given."""
    spec = _job()["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["backoffLimit"] == 6
    assert spec["podReplacementPolicy"] == "Failed"
    fail_job, ignore = spec["podFailurePolicy"]["rules"]
    assert fail_job["action"] == "FailJob"
    assert fail_job["onExitCodes"] == {"containerName": "upgrader", "operator": "In", "values": [2, 4, 6]}
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert "activeDeadlineSeconds" not in spec
    assert "ttlSecondsAfterFinished" not in spec
    spec = _job(backoff_limit=2, active_deadline_seconds=7200, ttl_seconds_after_finished=86400)["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (2, 7200, 86400)
    assert _job(ttl_seconds_after_finished=0)["spec"]["ttlSecondsAfterFinished"] == 0  # removed once finished


def test_job_pulls_its_image_with_the_given_pull_secrets() -> None:
    """imagePullSecrets (as the chart's value) only when given."""
    assert "imagePullSecrets" not in _job()["spec"]["template"]["spec"]
    pod = _job(image_pull_secrets=("registry-a", "registry-b"))["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]


def test_job_adds_the_chart_repository_in_an_init_container() -> None:
    """helm in the pod's empty home gets the repository `apply` reads, as `linkerd`, before upgrader starts."""
    job = _job(helm_repo_url="https://charts.example/linkerd")
    init = _container(job, "helm-repo")
    assert init["command"] == ["helm"]
    assert init["args"] == ["repo", "add", "linkerd", "https://charts.example/linkerd"]
    assert init["image"] == _container(job)["image"]
    assert init["env"] == _container(job)["env"]
    assert _container(_job(), "helm-repo")["args"][-1] == incluster.LINKERD_REPO


def test_job_windows_are_passed_as_window_options() -> None:
    """Each window is one --window; --wait-for-window only when asked."""
    args = _container(_job(windows=("tue-thu 01:00-05:00 UTC",), wait_for_window=True))["args"]
    assert args[-3:] == ["--window", "tue-thu 01:00-05:00 UTC", "--wait-for-window"]
    assert "--wait-for-window" not in _container(_job(windows=("mon 01:00-02:00",)))["args"]


@pytest.mark.parametrize(
    ("name", "target", "run_id"),
    [
        pytest.param("upgrade-linkerd", None, "upgrade-linkerd", id="a Job's run is named after the Job"),
        pytest.param("nightly", "stable-2.14.10", "nightly-stable-2-14-10", id="a CronJob's run carries its target"),
        pytest.param("Nightly.Upgrade", "edge-24.5.1", "nightly-upgrade-edge-24-5-1", id="names are made run ids"),
    ],
)
def test_run_id_for(name: str, target: str | None, run_id: str) -> None:
    """Run ids are lowercase letters, digits and dashes."""
    assert incluster.run_id_for(name, target) == run_id


def test_run_id_for_a_name_too_long_is_bad_input() -> None:
    """A run id is at most 52 characters: a longer Job name says to shorten it."""
    with pytest.raises(InputError, match="2-52"):
        incluster.run_id_for("x" * 53)


# ---- the CronJob -----------------------------------------------------------------------------------------


def test_cronjob_runs_one_job_at_a_time_with_one_run_per_target() -> None:
    """Forbid concurrency; every scheduled Job shares the run id <name>-<target>; windows make it wait for one."""
    cron = incluster.cronjob_manifest(
        name="nightly",
        namespace="upgrader",
        image="registry.example/upgrader@sha256:" + "b" * 64,
        target="stable-2.14.10",
        schedule="0 1 * * 2-4",
        time_zone="Europe/Berlin",
        windows=("tue-thu 01:00-05:00 Europe/Berlin",),
        spec_config_map="upgrader-spec",
    )
    assert cron["kind"] == "CronJob"
    assert cron["metadata"]["name"] == "nightly"
    spec = cron["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == ("0 1 * * 2-4", "Europe/Berlin", "Forbid")
    job_spec = spec["jobTemplate"]["spec"]
    args = job_spec["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--run-id") + 1] == "nightly-stable-2-14-10"
    assert args[-3:] == ["--window", "tue-thu 01:00-05:00 Europe/Berlin", "--wait-for-window"]
    assert job_spec["backoffLimit"] == 6


# ---- RBAC: one source of truth ---------------------------------------------------------------------------


def test_chart_rbac_rules_file_is_generated_from_the_permission_table() -> None:
    """deploy/chart/files/rbac-rules.yaml is exactly `upgrader rbac` (regenerate: make chart-rbac)."""
    assert RULES_FILE.read_text() == incluster.rbac_rules_document(), (
        "the chart's RBAC rules differ from upgrader.permissions: run `make chart-rbac`"
    )


def test_chart_rbac_rules_are_rbac_rules_of_every_scope() -> None:
    """Each scope's list in the chart's file is rbac_rules(scope), and every scope of the table has one."""
    loaded = yaml.safe_load(RULES_FILE.read_text())
    assert set(loaded) == {str(s) for s in Scope}
    for scope in Scope:
        assert loaded[str(scope)] == rbac_rules(scope), scope


def test_chart_rbac_rules_grant_every_row_of_the_table_and_nothing_else() -> None:
    """Expanding the chart's rules gives back exactly the (group, resource, verb, scope) rows of REQUIRED."""
    loaded = yaml.safe_load(RULES_FILE.read_text())
    granted = {
        (group, resource, verb, scope)
        for scope, rules in loaded.items()
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {(p.group, p.resource, p.verb, str(p.scope)) for p in REQUIRED}


def test_rbac_command_prints_the_chart_rules() -> None:
    """`upgrader rbac` prints what the chart's file holds."""
    out = CliRunner().invoke(app, ["rbac"])
    assert out.exit_code == 0, out.output
    assert out.output == RULES_FILE.read_text()


def test_chart_role_template_reads_every_scope_from_the_generated_file() -> None:
    """The chart's rbac.yaml takes its rules from files/rbac-rules.yaml (no rule written by hand)."""
    template = (CHART / "templates" / "rbac.yaml").read_text()
    assert '.Files.Get "files/rbac-rules.yaml"' in template
    assert "verbs:" not in template
    assert "apiGroups:" not in template
    for scope in ("control-plane", "releases", "state", "probe"):
        assert f'"scope" "{scope}"' in template
    assert 'index $rules "cluster"' in template
    # the probe pod's namespace is the run's own, not a value the run would not read
    assert f'(dict "scope" "probe" "namespace" "{PROBE_NAMESPACE}")' in template
    assert "probeNamespace" not in (CHART / "values.yaml").read_text()


# ---- the Containerfile -----------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def test_containerfile_bases_are_pinned_by_digest() -> None:
    """Every FROM names an image by sha256 digest (a tag alone can move)."""
    bases = [shlex.split(args)[0] for word, args in _instructions() if word == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        assert DIGEST.search(base), f"{base} is not pinned by digest"
    assert bases[-1].startswith("docker.io/library/python:3.11-slim@")


def test_containerfile_runs_as_a_numeric_non_root_user() -> None:
    """The final stage's USER is numeric (runAsNonRoot can check it) and not 0, and matches the Job's runAsUser."""
    users = [args for word, args in _final_stage() if word == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert int(uid) == incluster.RUN_AS_USER


def test_containerfile_entrypoint_is_the_console_script() -> None:
    """ENTRYPOINT (exec form) is the `upgrader` console script pyproject declares."""
    entry = [args for word, args in _final_stage() if word == "ENTRYPOINT"]
    assert entry == ['["upgrader"]']
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert yaml.safe_load(entry[0])[0] in scripts


def test_containerfile_creates_the_users_home_for_the_user() -> None:
    """HOME (the pod's emptyDir mount point, incluster.WORK_DIR) exists in the image, owned by the numeric user, so
    the image also runs without the chart (docker run) and helm can write its cache there."""
    final = _final_stage()
    env = " ".join(args for word, args in final if word == "ENV")
    assert f"HOME={incluster.WORK_DIR}" in env
    runs = " ".join(args for word, args in final if word == "RUN")
    uid = incluster.RUN_AS_USER
    assert f"install -d -m 0700 -o {uid} -g {uid} {incluster.WORK_DIR}" in runs
    assert "tests/test_incluster.py" in CONTAINERFILE.read_text().splitlines()[2]


def test_containerfile_installs_locked_dependencies_and_helm_from_our_lock() -> None:
    """pip installs requirements.lock with --require-hashes; helm is built from e2e/harness/go/helm at our pin."""
    steps = _instructions()
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "--require-hashes" in runs
    assert "-r /src/requirements.lock" in runs
    copies = [args for word, args in steps if word == "COPY"]
    assert "requirements.lock /src/requirements.lock" in copies
    assert "e2e/harness/go/helm/go.mod e2e/harness/go/helm/go.sum ./" in copies
    assert ("ARG", f"HELM_VERSION={binaries.HELM4_VERSION}") in steps
    assert "-mod=readonly" in " ".join(args for word, args in steps if word == "ENV")
    assert any(word == "COPY" and args.startswith("--from=helm ") for word, args in _final_stage())


# ---- a Job's pod takes over its own run's lock only --------------------------------------------------------

NOW = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
STALE = LeaseView("uid:65532@upgrader-abc12:1/nightly-stable-2-14-10", NOW - dt.timedelta(seconds=120), 60)


@pytest.mark.parametrize(
    ("existing", "me", "action"),
    [
        pytest.param(
            STALE, "uid:65532@upgrader-xyz99:1/nightly-stable-2-14-10", "take-over", id="own run, stale: taken"
        ),
        pytest.param(
            LeaseView(STALE.holder, NOW - dt.timedelta(seconds=10), 60),
            "uid:65532@upgrader-xyz99:1/nightly-stable-2-14-10",
            "refuse",
            id="own run, fresh: refused until the lease runs out",
        ),
        pytest.param(
            LeaseView("alice@laptop:4242/run-20261130-230000-ab12", STALE.renewed_at, 60),
            "uid:65532@upgrader-xyz99:1/nightly-stable-2-14-10",
            "refuse",
            id="another run, stale: refused",
        ),
    ],
)
def test_own_run_only_take_over(existing: LeaseView, me: str, action: str) -> None:
    """With own_run_only (apply --run-id), --take-over-lock takes over a stale lock only of the same run."""
    decision = decide(existing, me, NOW, take_over=True, own_run_only=True)
    assert decision.action == action, decision.reason
    if existing.holder.endswith("run-20261130-230000-ab12"):
        assert "run-20261130-230000-ab12" in decision.reason
        assert "upgrader resume/rollback" in decision.reason


def test_without_own_run_only_a_stale_lock_of_another_run_is_taken_over_as_before() -> None:
    """Plain --take-over-lock is unchanged."""
    other = LeaseView("alice@laptop:4242/run-20261130-230000-ab12", STALE.renewed_at, 60)
    assert decide(other, "bob@host:1/run-x1", NOW, take_over=True).action == "take-over"


# ---- the pod's own credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service_host", "kubeconfig_env", "home_config", "given", "inside"),
    [
        pytest.param("10.96.0.1", "", False, None, True, id="in a pod with no kubeconfig: the ServiceAccount"),
        pytest.param("10.96.0.1", "", False, Path("k"), False, id="--kubeconfig given: that file"),
        pytest.param("10.96.0.1", "/k", False, None, False, id="KUBECONFIG set: that file"),
        pytest.param("10.96.0.1", "", True, None, False, id="a ~/.kube/config: that file"),
        pytest.param("", "", False, None, False, id="outside a pod: the default kubeconfig"),
    ],
)
def test_in_cluster(  # noqa: PLR0917 - pytest passes fixtures and parameters by name
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    service_host: str,
    kubeconfig_env: str,
    home_config: bool,
    given: Path | None,
    inside: bool,
) -> None:
    """The pod's ServiceAccount is used only in a pod and only when no kubeconfig is given or found."""
    from upgrader.adapters.kube import in_cluster  # noqa: PLC0415 - the adapter, only for this test

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", service_host)
    monkeypatch.setenv("KUBECONFIG", kubeconfig_env)
    if home_config:
        (tmp_path / ".kube").mkdir()
        (tmp_path / ".kube" / "config").write_text("{}")
    assert in_cluster(given, None) is inside


@pytest.mark.parametrize("command", ["resume", "rollback"])
def test_commands_that_go_on_with_a_run_act_as_the_given_user(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """`resume` and `rollback` take --as like apply, and read the run's state store as that user."""
    from upgrader.cli import run as run_cli  # noqa: PLC0415 - the command module whose seam is replaced

    seen: list[Any] = []

    def store_for(*given: Any) -> Any:
        seen.append(given)
        raise InputError("stopped by the test", hint="none")

    monkeypatch.setattr(run_cli.runs, "store_for", store_for)
    out = CliRunner().invoke(app, [command, "run-1", "--as", "system:serviceaccount:upgrader:upgrader"])
    assert isinstance(out.exception, InputError), out.output  # the test's stop, not a refused option
    assert seen == [(None, None, None, "system:serviceaccount:upgrader:upgrader")]


def _stored(state: str, *, resume_after: dt.datetime | None = None) -> Any:
    from upgrader.checkpoints import Checkpoint, Event  # noqa: PLC0415
    from upgrader.states import RunState  # noqa: PLC0415

    now = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
    checkpoint = Checkpoint.new("nightly-1", {"from": "stable-2.13.7", "to": "stable-2.14.10", "hops": []}, now)
    checkpoint.state = RunState(state)
    checkpoint.resume_after = resume_after
    checkpoint.events.append(Event(at=now, state=RunState(state), reason=f"why it is {state}"))
    return checkpoint


@pytest.mark.parametrize(
    ("state", "window", "continued"),
    [
        ("UpgradingControlPlane", False, True),  # a pod killed mid-step
        ("Preflight", False, True),
        ("Paused", True, True),  # a maintenance window paused it: its next opening is known
        ("Paused", False, False),  # a gate (Prometheus not answering) or an interrupted rollback paused it
        ("Failed", False, False),
        ("RollingBack", False, False),
        ("RolledBack", False, False),
    ],
)
def test_apply_run_id_continues_only_an_interrupted_or_window_paused_run(
    monkeypatch: pytest.MonkeyPatch, state: str, window: bool, continued: bool
) -> None:
    """A Job's pod started again continues its run only when nothing but the pod's end stopped it; a run that
    stopped for an operator is reported with exit 6, which the Job's podFailurePolicy makes final."""
    from upgrader.cli import run as run_cli  # noqa: PLC0415 - the command module whose seam is replaced
    from upgrader.errors import EXIT_NEEDS_OPERATOR, RunNeedsOperatorError  # noqa: PLC0415

    opens = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.UTC) if window else None
    existing = _stored(state, resume_after=opens)
    resumed: list[str] = []

    def resume_session(checkpoint: Any, **_: Any) -> Any:
        resumed.append(checkpoint.run_id)
        raise InputError("stopped by the test", hint="none")

    monkeypatch.setattr(run_cli.runs, "resume_session", resume_session)
    call = {
        "to": None, "spec_file": None, "kubeconfig": None, "context": None, "helm": "helm", "impersonate": None,
        "options": None, "take_over": True, "state_store": None, "windows": [], "wait_for_window": False,
    }  # fmt: skip
    with pytest.raises((InputError, RunNeedsOperatorError)) as raised:
        run_cli._continue_named(existing, None, **call)  # type: ignore[arg-type]
    if continued:
        assert resumed == ["nightly-1"]
        assert raised.value.message == "stopped by the test"
    else:
        assert not resumed
        assert raised.value.exit_code == EXIT_NEEDS_OPERATOR
        assert f"why it is {state}" in raised.value.message
        assert "upgrader resume nightly-1" in (raised.value.hint or "")
        assert EXIT_NEEDS_OPERATOR in incluster.POD_FAILURE_POLICY["rules"][0]["onExitCodes"]["values"]


@pytest.mark.parametrize(("flags", "own_only"), [([], False), (["--own-lock-only"], True)])
def test_resume_takes_over_only_its_own_runs_lock_when_told(
    monkeypatch: pytest.MonkeyPatch, flags: list[str], own_only: bool
) -> None:
    """`resume RUN --take-over-lock --own-lock-only` (what `rollout resume` launches) hands own_lock_only to the run."""
    from upgrader.cli import run as run_cli  # noqa: PLC0415 - the command module whose seams are replaced

    seen: dict[str, Any] = {}

    class Session:
        spec = type("S", (), {"with_windows": lambda self, _w: self})()

    def execute(*_: Any, **kw: Any) -> Any:
        seen.update(kw)
        raise InputError("stopped by the test", hint="none")

    monkeypatch.setattr(run_cli.runs, "store_for", lambda *_: None)
    monkeypatch.setattr(run_cli.runs, "load_run", lambda *_, **__: _stored("UpgradingControlPlane"))
    monkeypatch.setattr(run_cli.runs, "resume_session", lambda *_, **__: Session())
    monkeypatch.setattr(run_cli.runs.RunOptions, "stored", classmethod(lambda cls, *_, **__: run_cli.runs.RunOptions()))
    monkeypatch.setattr(run_cli.runs, "execute", execute)
    out = CliRunner().invoke(app, ["resume", "nightly-1", "--take-over-lock", *flags])
    assert isinstance(out.exception, InputError), out.output
    assert (seen["take_over"], seen["own_lock_only"]) == (True, own_only)

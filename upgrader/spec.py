"""Plan specs (``plans/*.yaml``): how an operator wants an upgrade run.

A spec never names the versions found in the cluster; it says how to get anywhere:
values strategy, data-plane waves and throttles, gates, what to do on failure, the
maintenance window, acknowledged notes and waived preflight checks. Keys are camelCase in
YAML. ``load_spec`` turns any problem into an InputError naming the file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from upgrader.errors import InputError

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_duration(text: str) -> int:
    """``1h30m``, ``5m``, ``45s`` or ``0s`` -> seconds."""
    m = _DURATION.match(text.strip())
    if not text.strip() or not m:
        raise ValueError(f"{text!r} is not a duration like 90s, 5m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return hours * 3600 + minutes * 60 + seconds


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


def _duration(value: str) -> str:
    parse_duration(value)
    return value


class Wave(_Model):
    """Namespaces restarted together; a wave starts when the previous one passed and baked."""

    name: str
    namespaces: list[str] = Field(default_factory=list)  # "*" = every meshed namespace not in an earlier wave
    selector: dict[str, str] = Field(default_factory=dict)  # namespace matchLabels
    bake_time: str = "0s"

    _check_bake = field_validator("bake_time")(_duration)

    @model_validator(mode="after")
    def _some_target(self) -> Wave:
        if not self.namespaces and not self.selector:
            raise ValueError(f"wave {self.name!r} names no namespaces and no selector")
        return self


class DataPlane(_Model):
    waves: list[Wave] = Field(default_factory=lambda: [Wave(name="all", namespaces=["*"])], min_length=1)
    max_concurrent_per_namespace: int = Field(default=1, ge=1)
    max_namespaces: int = Field(default=2, ge=1)
    max_restarts_per_minute: float | None = Field(default=None, gt=0)
    exclude_namespaces: list[str] = Field(default_factory=list)
    include_selector: dict[str, str] = Field(default_factory=dict)  # namespace labels; empty = every namespace
    exclude_selector: dict[str, str] = Field(default_factory=dict)  # namespace labels to leave alone
    pdb_wait_timeout: str = "10m"

    _check_pdb = field_validator("pdb_wait_timeout")(_duration)


class ValuesSpec(_Model):
    strategy: Literal["reset-then-reuse", "reuse", "reset"] = "reset-then-reuse"
    overrides: dict[str, Any] = Field(default_factory=dict)
    file: str | None = None
    # HA installations: ``target`` layers the target chart's values-ha.yaml under the user's own values
    # (the installed chart's values-ha.yaml taken out of them); ``keep`` sends the user values as they are
    ha_values: Literal["target", "keep"] = "target"


class Gates(_Model):
    rollout_timeout: str = "10m"
    prometheus_url: str | None = None
    min_success_rate: float = Field(default=0.99, ge=0, le=1)
    max_p99_latency_ms: int | None = Field(default=None, gt=0)
    max_success_rate_drop: float = Field(default=0.01, ge=0, le=1)  # versus before the wave
    max_p99_increase: float = Field(default=1.5, ge=1)  # factor over p99 before the wave
    metrics_window: str = "5m"

    _check = field_validator("rollout_timeout", "metrics_window")(_duration)

    @field_validator("prometheus_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # the value is never echoed: it may hold user:pass@
        if value is not None and not re.match(r"^https?://[^/?#\s]+", value, re.IGNORECASE):
            raise ValueError(
                "must be an http:// or https:// URL with a host, like http://prometheus.linkerd-viz.svc:9090"
            )
        return value

    @field_validator("metrics_window")
    @classmethod
    def _some_window(cls, value: str) -> str:
        if parse_duration(value) == 0:
            raise ValueError("must be longer than 0s (Prometheus rates need a window), like 5m")
        return value


class Window(_Model):
    """A maintenance window; a run pauses at its end and does not start outside it."""

    start: str
    end: str
    timezone: str = "UTC"
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time like 02:00")
        return value


class Spec(_Model):
    api_version: Literal["upgrader.io/v1alpha1"] = "upgrader.io/v1alpha1"
    kind: Literal["UpgradeSpec"] = "UpgradeSpec"
    name: str = "default"
    description: str = ""
    target: str | None = None  # default for --to
    path: list[str] = Field(default_factory=list)  # explicit intermediate releases, one major apart
    values: ValuesSpec = Field(default_factory=ValuesSpec)
    data_plane: DataPlane = Field(default_factory=DataPlane)
    gates: Gates = Field(default_factory=Gates)
    on_failure: Literal["pause", "rollback"] = "pause"
    window: Window | None = None
    acknowledge: list[str] = Field(default_factory=list)
    waivers: list[str] = Field(default_factory=list)
    dry_run: bool = False
    # Versions pinned in the values or on workloads (upgrader.pins): refuse to plan, or upgrade the rest and report.
    pins: Literal["refuse", "report"] = "refuse"

    @model_validator(mode="after")
    def _window_not_enforced(self) -> Spec:
        # A field we accept is enforced: a run would neither wait for a window nor pause at its end.
        if self.window is not None:
            raise ValueError(
                "window: maintenance windows are not enforced yet (a run would not wait for it or pause at its "
                "end); remove `window` and start the run from your scheduler inside the window"
            )
        return self


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base`` (maps merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file; every problem is an InputError naming file and field."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise InputError(f"cannot read spec {path}: {exc.strerror}", hint="pass --spec PATH of a plan spec") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"spec {path} is not UTF-8 text", hint="pass --spec PATH of a YAML plan spec") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"spec {path} is not valid YAML: {exc}") from exc
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"spec {path} is invalid: {problems}", hint="see plans/ for examples") from exc
    if spec.values.file:
        values_path = (path.parent / spec.values.file).expanduser()
        try:
            loaded = yaml.safe_load(values_path.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(
                f"spec {path}: cannot read values.file {values_path}: {exc}",
                hint="values.file is relative to the spec's folder",
            ) from exc
        if not isinstance(loaded, dict):
            raise InputError(f"spec {path}: values.file {values_path} is not a map of values")
        merged = deep_merge(loaded, spec.values.overrides)  # the spec's own overrides win over the file
        spec = spec.model_copy(update={"values": spec.values.model_copy(update={"overrides": merged})})
    return spec

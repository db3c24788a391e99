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
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from upgrader.errors import InputError
from upgrader.inputs import SPEC_CAP, read_yaml_file, validation_error

# ASCII digits only (``\d`` and ``int()`` take any Unicode digit), at most 7 of them per unit
_DURATION = re.compile(r"(?:([0-9]{1,7})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,7})s)?", re.ASCII)
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])", re.ASCII)
MAX_DURATION = 7 * 24 * 3600  # a week: any wait longer than that is a typo


def parse_duration(text: str) -> int:
    """``1h30m``, ``5m``, ``45s`` or ``0s`` -> seconds (at most 7 days)."""
    m = _DURATION.fullmatch(text.strip())
    if not text.strip() or not m:
        shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
        raise ValueError(f"{shown} is not a duration like 90s, 5m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in m.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_DURATION:
        raise ValueError(f"{text.strip()!r} is longer than 7 days (168h); use a duration like 90s, 5m or 1h30m")
    return total


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
        if value is not None and not _http_url_with_host(value):
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


def _http_url_with_host(value: str) -> bool:
    """``value`` is an http(s) URL with a host and a valid port (never printed: it may hold credentials)."""
    if len(value) > 2048 or not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and port != 0


class Window(_Model):
    """A maintenance window; a run pauses at its end and does not start outside it."""

    start: str
    end: str
    timezone: str = "UTC"
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.fullmatch(value):
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
    # Who manages the Gateway API route CRDs (upgrader.gatewayapi): keep whoever does now, linkerd-crds, or not Linkerd.
    gateway_api: Literal["auto", "linkerd", "external"] = Field(default="auto", alias="gatewayAPI")

    @field_validator("window", mode="before")
    @classmethod
    def _window_not_enforced(cls, value: Any) -> Any:
        # A field we accept is enforced: a run would neither wait for a window nor pause at its end. Refused
        # before its contents are read, so `start: 1:00` (a number to YAML) gets this message, not a type error.
        if value is not None:
            raise ValueError(
                "maintenance windows are not enforced yet (a run would not wait for it or pause at its "
                "end); remove `window` and start the run from your scheduler inside the window"
            )
        return value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged into a copy of ``base`` (maps merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file; every problem is an InputError naming file, line and field."""
    hint = "pass --spec PATH of a YAML plan spec; see plans/ for examples"
    data, marks = read_yaml_file(path, what="spec", cap=SPEC_CAP, hint=hint)
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {_shape(data)}"
        raise InputError(f"spec {path} must be a map of fields (like plans/*.yaml), found {found}", hint=hint)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source=f"spec {path}", marks=marks, hint="see plans/ for examples") from None
    if spec.values.file:
        values_path = (path.parent / spec.values.file).expanduser()
        try:
            loaded, _ = read_yaml_file(
                values_path,
                what="values.file",
                cap=SPEC_CAP,
                aliases=True,  # values files copy Linkerd's values-ha.yaml, anchors and all (expansion capped)
                hint="values.file is a YAML map of chart values, relative to the spec's folder",
            )
        except InputError as exc:
            raise InputError(f"spec {path}: {exc.message}", hint=exc.hint) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(
                f"spec {path}: values.file {values_path} is not a map of values (found a {_shape(loaded)})",
                hint="values.file is a YAML map of chart values, relative to the spec's folder",
            )
        merged = deep_merge(loaded, spec.values.overrides)  # the spec's own overrides win over the file
        spec = spec.model_copy(update={"values": spec.values.model_copy(update={"overrides": merged})})
    return spec


def _shape(data: object) -> str:
    if isinstance(data, bool):
        return "boolean"
    return {int: "number", float: "number", str: "string", list: "list"}.get(type(data), type(data).__name__)

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
from upgrader.windows import EVERY_DAY, Rule, check_zone, duration_text, parse_clock, parse_days

# ASCII digits only (``\d`` and ``int()`` take any Unicode digit), at most 7 of them per unit
_DURATION = re.compile(r"(?:([0-9]{1,7})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,7})s)?", re.ASCII)
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


class Notify(_Model):
    """Where a run's events go (one JSON POST per state change; see upgrader.notifications)."""

    webhook_url: str
    timeout: str = "5s"  # per attempt
    retries: int = Field(default=3, ge=0, le=10)  # after the first attempt, with backoff

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # the value is never echoed: it may hold user:pass@ or a token
        if not _http_url_with_host(value):
            raise ValueError("must be an http:// or https:// URL with a host, like https://hooks.example.com/upgrades")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        if not 1 <= parse_duration(value) <= 60:
            raise ValueError(f"{value.strip()!r} must be from 1s to 60s, like 5s")
        return value


class Window(_Model):
    """A maintenance window: a run starts and each step starts only if it can finish inside one.

    ``days`` are the days it opens (``mon``, or a range like ``tue-thu``; none: every day); ``start``
    and ``end`` are local ``HH:MM`` in ``timezone`` (an IANA zone); an ``end`` before ``start``
    crosses midnight. ``margin`` is kept free before the window closes. See ``upgrader.windows``.
    """

    days: list[str] = Field(default_factory=list)
    start: str
    end: str
    timezone: str = "UTC"
    margin: str = "5m"

    _check_margin = field_validator("margin")(_duration)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _clock(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 22:00 unquoted as 1320
            raise ValueError(
                f"read as the number {value}: YAML takes an unquoted time like 22:00 for a number; "
                "quote it, like '22:00'"
            )
        if isinstance(value, str):
            parse_clock(value)
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_days(item)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_zone(value)

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.start == self.end:
            raise ValueError(
                f"start and end are both {self.start}: the window is empty (an end before the start "
                "crosses midnight, like 22:00-02:00)"
            )
        rule = self.rule()
        if rule.capacity <= 0:
            raise ValueError(
                f"margin {self.margin} leaves no time in the {duration_text(rule.length)} window "
                f"{self.start}-{self.end}"
            )
        return self

    def rule(self) -> Rule:
        days = frozenset().union(*(parse_days(d) for d in self.days)) if self.days else EVERY_DAY
        return Rule(
            days=days,
            start=parse_clock(self.start),
            end=parse_clock(self.end),
            zone=self.timezone,
            margin=parse_duration(self.margin),
        )


def window_from_text(text: str) -> Window:
    """``--window "[DAYS] HH:MM-HH:MM [ZONE] [margin=DURATION]"`` -> a Window (InputError naming the option)."""
    hint = 'like --window "tue-thu 01:00-05:00 Europe/Berlin" or --window "daily 22:00-02:00 UTC margin=10m"'
    shown = repr(text) if len(text) <= 80 else repr(text[:80]) + "..."
    fields: dict[str, Any] = {}
    for token in text.split():
        if "=" in token:
            key, _, value = token.partition("=")
            if key != "margin" or "margin" in fields:
                raise InputError(f"--window {shown}: {token!r} is not understood (only margin=DURATION)", hint=hint)
            fields["margin"] = value
        elif re.fullmatch(r"[0-9:]+-[0-9:]+", token) and "start" not in fields:
            fields["start"], _, fields["end"] = token.partition("-")
        elif "start" not in fields and "days" not in fields:
            fields["days"] = [] if token.lower() in ("daily", "*") else [token.lower()]
        elif "start" in fields and "timezone" not in fields:
            fields["timezone"] = token
        else:
            raise InputError(f"--window {shown}: {token!r} is not understood", hint=hint)
    if "start" not in fields:
        raise InputError(f"--window {shown} has no HH:MM-HH:MM", hint=hint)
    try:
        return Window.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise InputError(f"--window {shown}: {problems}", hint=hint) from None


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
    windows: list[Window] = Field(default_factory=list)  # several windows; a run may act in any of them
    notify: Notify | None = None
    acknowledge: list[str] = Field(default_factory=list)
    waivers: list[str] = Field(default_factory=list)
    dry_run: bool = False
    # Versions pinned in the values or on workloads (upgrader.pins): refuse to plan, or upgrade the rest and report.
    pins: Literal["refuse", "report"] = "refuse"
    # Who manages the Gateway API route CRDs (upgrader.gatewayapi): keep whoever does now, linkerd-crds, or not Linkerd.
    gateway_api: Literal["auto", "linkerd", "external"] = Field(default="auto", alias="gatewayAPI")

    @model_validator(mode="after")
    def _one_way_to_give_windows(self) -> Spec:
        if self.window is not None and self.windows:
            raise ValueError("give either window (one) or windows (a list), not both")
        return self

    def window_rules(self) -> tuple[Rule, ...]:
        """The maintenance windows a run keeps to (none: any time)."""
        return tuple(w.rule() for w in ([self.window] if self.window else self.windows))

    def with_windows(self, given: list[Window]) -> Spec:
        """This spec with the command line's ``--window``s instead of its own (none given: unchanged)."""
        return self.model_copy(update={"window": None, "windows": list(given)}) if given else self


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

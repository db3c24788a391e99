"""Maintenance windows: when a run may act, and whether its next step fits in what is left.

A window opens at ``start`` (local time in its IANA zone) on each of its days and closes at
``end``; an ``end`` earlier than ``start`` closes on the next day (``22:00-02:00`` crosses
midnight, and its days are the days it opens). ``start == end`` is no window and is bad
input (the spec refuses it). Days are the weekdays it opens on, every day when none are
given.

Local times are turned into instants in the window's zone. On a DST day a local time can
be missing (spring forward) or happen twice (fall back); both readings are computed and the
window takes the one that makes it *shorter*: the later instant for its opening, the earlier
for its closing. A window is never longer than the operator could have meant.

Everything here is pure: the time ``now`` is passed in. ``fits`` is the gate the executor
asks before each step (a step fits when it ends, with the window's safety margin, before the
window closes); ``plan_fit`` is what the planner shows (the whole run in one window, or the
first step of the next one) and ``estimate`` turns recorded step durations into an estimate.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_DAY = frozenset(range(7))
_CLOCK = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?", re.ASCII)
LOOKAHEAD_DAYS = 9  # a weekly window always opens within 8 days
RECENT = 5  # recorded durations an estimate looks at (the longest of them)
# the event a run logs when its window check refuses to start it now (exit 3, nothing stored): a rollout
# reads it from the run's log and pauses (upgrader.rollout.run_state_of) instead of calling the run failed
REFUSED_EVENT = "window-refused"


def parse_days(text: str) -> frozenset[int]:
    """``tue-thu``, ``mon,wed,fri``, ``fri-mon`` (wraps over Sunday), ``daily`` -> weekday numbers (Monday 0)."""
    text = text.strip().lower()
    if text in ("daily", "*", "every-day"):
        return EVERY_DAY
    days: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if first not in DAY_NAMES or (dash and last not in DAY_NAMES):
            raise ValueError(
                f"{part.strip()!r} is not a day or a range of days like tue-thu (days: {', '.join(DAY_NAMES)}; "
                "or daily)"
            )
        a = DAY_NAMES.index(first)
        b = DAY_NAMES.index(last) if dash else a
        if dash and a == b:
            raise ValueError(f"{part.strip()!r} is a range of one day: write {first}")
        days.update((a + n) % 7 for n in range((b - a) % 7 + 1))
    return frozenset(days)


def parse_clock(text: str) -> dt.time:
    """``HH:MM`` (00:00 to 23:59), or ``HH:MM:SS`` -> a time."""
    m = _CLOCK.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a time like 02:00 (HH:MM, 00:00 to 23:59)")
    return dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def clock_text(moment: dt.time) -> str:
    return f"{moment:%H:%M:%S}" if moment.second else f"{moment:%H:%M}"


def _seconds(moment: dt.time) -> int:
    return moment.hour * 3600 + moment.minute * 60 + moment.second


def check_zone(name: str) -> str:
    """``name`` if it is an IANA time zone this machine knows (``Europe/Berlin``, ``UTC``)."""
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        shown = repr(name) if len(name) <= 60 else repr(name[:60]) + "..."
        raise ValueError(f"{shown} is not an IANA time zone (like Europe/Berlin, America/New_York or UTC)") from None
    return name


@cache
def _zone(name: str) -> ZoneInfo:
    if not name or len(name) > 255 or name.startswith("/") or ".." in name:
        raise ValueError(name)
    return ZoneInfo(name)


@dataclass(frozen=True)
class Rule:
    """One window: the days it opens, its local start and end, its zone and its safety margin (seconds)."""

    days: frozenset[int]
    start: dt.time
    end: dt.time
    zone: str = "UTC"
    margin: int = 300

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"the window {self} is empty: it starts and ends at {clock_text(self.start)}")

    @property
    def length(self) -> int:
        """Seconds from start to end on a day without a DST change."""
        return (_seconds(self.end) - _seconds(self.start)) % (24 * 3600)

    @property
    def capacity(self) -> int:
        """The longest step (seconds) that fits in the window with its margin."""
        return self.length - self.margin

    def days_text(self) -> str:
        if self.days == EVERY_DAY:
            return "daily"
        return ",".join(DAY_NAMES[d] for d in sorted(self.days))

    def __str__(self) -> str:
        return f"{self.days_text()} {clock_text(self.start)}-{clock_text(self.end)} {self.zone}"

    def openings(self, since: dt.datetime, days: int = LOOKAHEAD_DAYS) -> list[Interval]:
        """Every opening of this window that ends after ``since``, from the day before it for ``days`` days."""
        zone = _zone(self.zone)
        first = since.astimezone(zone).date() - dt.timedelta(days=1)
        out = []
        for n in range(days + 1):
            day = first + dt.timedelta(days=n)
            if day.weekday() not in self.days:
                continue
            end_day = day + dt.timedelta(days=1) if self.end <= self.start else day
            opens = _instant(day, self.start, zone, later=True)
            closes = _instant(end_day, self.end, zone, later=False)
            if closes > opens and closes > since:
                out.append(Interval(opens, closes, self))
        return out


def _instant(day: dt.date, clock: dt.time, zone: ZoneInfo, *, later: bool) -> dt.datetime:
    """``day clock`` in ``zone`` as UTC; a missing or doubled local time: the later or the earlier reading."""
    readings = [dt.datetime.combine(day, clock, tzinfo=zone).replace(fold=f).astimezone(dt.UTC) for f in (0, 1)]
    return max(readings) if later else min(readings)


@dataclass(frozen=True)
class Interval:
    """One opening of a window, as UTC instants (``rule`` gives its zone and margin)."""

    start: dt.datetime
    end: dt.datetime
    rule: Rule

    def closes_text(self) -> str:
        return local(self.end, self.rule.zone)

    def opens_text(self) -> str:
        return local(self.start, self.rule.zone, with_day=True)


def local(moment: dt.datetime, zone: str, *, with_day: bool = False) -> str:
    """``05:00 Europe/Berlin`` (or ``Tue 2026-12-01 01:00 Europe/Berlin``) for a UTC instant."""
    here = moment.astimezone(_zone(zone))
    clock = clock_text(here.time().replace(microsecond=0))
    return f"{here:%a %Y-%m-%d} {clock} {zone}" if with_day else f"{clock} {zone}"


def _merged(rules: Sequence[Rule], since: dt.datetime, days: int = LOOKAHEAD_DAYS) -> list[Interval]:
    """Every opening after ``since`` over ``days``; overlapping or touching ones merged (the later-closing
    one's rule kept)."""
    found = sorted((i for r in rules for i in r.openings(since, days)), key=lambda i: (i.start, i.end))
    merged: list[Interval] = []
    for interval in found:
        if merged and interval.start <= merged[-1].end:
            last = merged[-1]
            if interval.end > last.end:
                merged[-1] = Interval(last.start, interval.end, interval.rule)
            continue
        merged.append(interval)
    return merged


def open_at(rules: Sequence[Rule], now: dt.datetime) -> Interval | None:
    """The (merged) window open at ``now``: ``start <= now < end``."""
    return next((i for i in _merged(rules, now) if i.start <= now < i.end), None)


def next_open(rules: Sequence[Rule], after: dt.datetime) -> Interval | None:
    """The first (merged) window opening at or after ``after``."""
    return next((i for i in _merged(rules, after) if i.start >= after), None)


def duration_text(seconds: float) -> str:
    """About how long, for people: ``45 s``, ``12 min``, ``2 h 5 min``."""
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


@dataclass(frozen=True)
class Fit:
    """Whether a step may start now; if not, why and when the next window opens."""

    ok: bool
    reason: str = ""
    next_opening: Interval | None = None

    def next_text(self) -> str:
        if self.next_opening is None:
            return "no window opens in the next week"
        return f"the next window opens {self.next_opening.opens_text()}"


def fits(rules: Sequence[Rule], now: dt.datetime, seconds: float, what: str) -> Fit:
    """May a step of ``seconds`` (about; ``what`` names it) start at ``now``? Always yes without windows."""
    if not rules:
        return Fit(True)
    current = open_at(rules, now)
    if current is None:
        return Fit(False, f"outside the maintenance window ({'; '.join(map(str, rules))})", next_open(rules, now))
    need = seconds + current.rule.margin
    if now + dt.timedelta(seconds=need) <= current.end:
        return Fit(True)
    margin = f" plus the {duration_text(current.rule.margin)} margin" if current.rule.margin else ""
    return Fit(
        False,
        f"window closes at {current.closes_text()}; {what} needs about {duration_text(seconds)}{margin}",
        next_open(rules, current.end),
    )


@dataclass(frozen=True)
class PlanFit:
    """What the plan shows: does the run fit in one window, else the first step of the next one; or a refusal."""

    fits_one_window: bool
    first_of_next_window: str | None = None
    too_long: str | None = None  # a step no window can hold: the plan is refused


@dataclass(frozen=True)
class Capacity:
    """The longest step (seconds) a window holds every week, and the (merged) opening that gives it."""

    seconds: int
    opening: Interval | None

    def too_long(self, what: str, seconds: float) -> str | None:
        """Why no window can ever hold ``what`` (``seconds`` long), or None when one can."""
        if seconds <= self.seconds:
            return None
        if self.opening is None:
            return f"{what} needs about {duration_text(seconds)} and no maintenance window opens"
        rule = self.opening.rule
        start = self.opening.start.astimezone(_zone(rule.zone))
        end = self.opening.end.astimezone(_zone(rule.zone))
        whole = (start.time(), end.time()) == (rule.start, rule.end)  # one window's opening, not merged ones
        longest = str(rule) if whole else f"{start:%a} {clock_text(start.time())}-{clock_text(end.time())} {rule.zone}"
        return (
            f"no maintenance window is long enough for {what}: it needs about {duration_text(seconds)}; "
            f"the longest, {longest}, leaves {duration_text(max(0, self.seconds))} after its "
            f"{duration_text(rule.margin)} margin"
        )


ANCHOR = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)  # a Monday: plans measure windows over the year after it
YEAR_DAYS = 371  # 53 weeks: every weekly opening on both DST changes


def capacity(rules: Sequence[Rule], since: dt.datetime = ANCHOR) -> Capacity:
    """The longest step some window holds every week of the year after ``since``.

    Openings are merged first (01:00-03:00 and 03:00-05:00 hold a 3 h step). Each weekly opening
    (its local weekday and window) counts with its shortest length over the year, so a DST day
    that shortens it counts; the result is the roomiest of them, less its margin.
    """
    merged = _merged(rules, since, YEAR_DAYS)
    shortest: dict[tuple[int, str], tuple[int, Interval]] = {}
    for opening in merged:
        if opening.start < since:
            continue  # may be cut short by ``since``'s own reading: the same weekly opening comes again
        key = (opening.start.astimezone(_zone(opening.rule.zone)).weekday(), str(opening.rule))
        room = int((opening.end - opening.start).total_seconds()) - opening.rule.margin
        if key not in shortest or room < shortest[key][0]:
            shortest[key] = (room, opening)
    if not shortest:
        return Capacity(0, None)
    room, opening = max(shortest.values(), key=lambda pair: (pair[0], -pair[1].start.timestamp()))
    return Capacity(room, opening)


def plan_fit(rules: Sequence[Rule], steps: Iterable[tuple[str, int]], since: dt.datetime = ANCHOR) -> PlanFit:
    """Walk the steps from the opening of the roomiest window: where the first one that does not fit falls."""
    room = capacity(rules, since)
    capacity_seconds = room.seconds
    used, first_late = 0, None
    for label, seconds in steps:
        if (why := room.too_long(label, seconds)) is not None:
            return PlanFit(False, too_long=why)
        if first_late is None and used + seconds > capacity_seconds:
            first_late = label
        used += seconds
    return PlanFit(first_late is None, first_late)


def estimate(recorded: Sequence[float], default: int) -> int:
    """Seconds a step of some kind takes: the longest of its last recorded durations, else the plan default."""
    recent = [s for s in recorded[-RECENT:] if s >= 0]
    return math.ceil(max(recent)) if recent else default


def history(records: Iterable[Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Recorded durations per step kind, oldest first, from several runs' records (oldest run first)."""
    out: dict[str, list[float]] = {}
    for record in records:
        for kind, seconds in record.items():
            out.setdefault(kind, []).extend(seconds)
    return out

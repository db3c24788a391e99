"""Structured logging: readable console lines for people, JSON lines for automation."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from rich.markup import escape

LogFormat = Literal["console", "json"]

# C0 and C1 controls but newline and tab, DEL, and the bidirectional overrides that reorder text on screen
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with control characters (but newline and tab) shown as escapes: ``\\x1b`` for ESC.

    Everything a person's terminal shows goes through here, so nothing read from a file, a
    checkpoint or the cluster can move the cursor, recolour the screen or hide text.
    """
    return _UNPRINTABLE.sub(_visible, str(text))


def bounded(text: object, limit: int = 200) -> str:
    """``text`` printable and, past ``limit`` characters, cut with an ellipsis (tables; never JSON or YAML)."""
    shown = printable(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 1]}…"


def markup_safe(text: object) -> str:
    """``text`` made printable and with rich markup escaped, for the few places that print markup."""
    return escape(printable(text))


def _printable_event(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Console log lines: string values made printable (JSON lines escape control characters themselves)."""
    return {printable(k): printable(v) if isinstance(v, str) else v for k, v in event.items()}


def configure(fmt: LogFormat = "console", level: str = "info") -> None:
    """Send structlog events (and stdlib logging, e.g. pyhelm3's) to stderr in ``fmt``."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        shared.append(_printable_event)
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # pyhelm3 logs every helm command line at INFO; keep it for --log-level debug only.
    logging.getLogger("pyhelm3").setLevel(max(numeric, logging.WARNING))

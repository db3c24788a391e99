"""The input boundary: every file the tool reads comes in through here.

Spec files, a spec's ``values.file``, plan files (``apply --plan``), checkpoints of the file
state store and the ``--kubeconfig`` path are all hostile until proven otherwise:

- only regular files are opened (a directory, a named pipe, ``/dev/zero`` or a dangling
  symlink is refused from ``os.stat`` before anything is read, and the file is opened with
  ``O_NONBLOCK`` so a pipe swapped in between cannot block);
- at most ``cap + 1`` bytes are read: a bigger file is refused, not truncated;
- the bytes must be UTF-8 (the error names the byte offset and the line);
- YAML goes through ``StrictLoader``, a SafeLoader that refuses aliases (or, for values
  files, which copy Linkerd's values-ha.yaml and its anchors, caps their expansion), refuses
  recursive anchors and duplicate keys, caps the nesting depth and keeps timestamps as text;
- JSON refuses duplicate keys, NaN and Infinity, and is held to the same depth cap;
- what is loaded must be plain data (maps with string keys, lists, strings, numbers,
  booleans, null).

Every problem is an ``InputError`` naming the file, the line and column when known, the
field path and what was expected. ``validation_error`` turns a pydantic ValidationError into
one such error (field path -> what was expected; the rejected value is never echoed, it may
hold a credential).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from upgrader.errors import InputError

KIB = 1024
MIB = 1024 * KIB
SPEC_CAP = 1 * MIB  # specs and values files
DOCUMENT_CAP = 16 * MIB  # plans and checkpoints
MAX_DEPTH = 50  # YAML specs and values files
JSON_MAX_DEPTH = 100  # plans and checkpoints: their own nesting plus the values they carry
MAX_ALIAS_NODES = 100_000  # values files: nodes after expanding aliases
MAX_INT_DIGITS = 30  # a YAML or JSON integer; 64-bit numbers have 20

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _stat_regular(path: Path, what: str, hint: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise InputError(f"{what} {path} is a dangling symlink (its target does not exist)", hint=hint) from None
        raise InputError(f"{what} {path} does not exist", hint=hint) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read {what} {path}: {reason}", hint=hint) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file", hint=hint)
    return st


def check_regular_file(path: Path, *, what: str, hint: str = "") -> None:
    """``path`` exists and is a regular file (others read it, e.g. the kubernetes client a kubeconfig)."""
    _stat_regular(path, what, hint)


def read_bytes(path: Path, *, what: str, cap: int, hint: str = "") -> bytes:
    """At most ``cap`` bytes of the regular file ``path``; anything else is an InputError naming it."""
    _stat_regular(path, what, hint)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}", hint=hint) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
            raise InputError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file", hint=hint)
        chunks: list[bytes] = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, MIB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}", hint=hint) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > cap:
        raise InputError(f"{what} {path} is larger than {_size(cap)}", hint=hint or f"a {what} is a small text file")
    return data


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB and n % MIB == 0 else f"{n} bytes"


def decode(data: bytes, *, source: str, hint: str = "") -> str:
    """UTF-8 text of ``data``; the error names the first bad byte's offset and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"{source} is not UTF-8 text: byte {exc.start} (line {line}) is 0x{data[exc.start]:02x}", hint=hint
        ) from None


def read_text(path: Path, *, what: str, cap: int, hint: str = "") -> str:
    """The UTF-8 text of the regular file ``path`` (at most ``cap`` bytes)."""
    return decode(read_bytes(path, what=what, cap=cap, hint=hint), source=f"{what} {path}", hint=hint)


# ---- YAML -----------------------------------------------------------------------------------


class _Refused(yaml.MarkedYAMLError):
    """A YAML document we refuse to load (aliases, depth, duplicates), with where it happened."""


_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases (or with capped expansion), duplicate keys, deep nesting or timestamps."""

    allow_aliases = False
    max_depth = MAX_DEPTH

    # timestamps stay text, as helm (Go YAML to JSON) reads them; the copy leaves SafeLoader's table alone
    yaml_implicit_resolvers = {  # noqa: RUF012 - PyYAML's own class-level table, overridden per loader class
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, AliasEvent):
            if not self.allow_aliases:
                raise _Refused(None, None, f"YAML aliases (*{event.anchor}) are not accepted here", mark)
            if event.anchor in self._open_anchors:
                raise _Refused(None, None, f"anchor &{event.anchor} refers to itself (recursive)", mark)
            return super().compose_node(parent, index)
        if self._depth >= self.max_depth:
            raise _Refused(None, None, f"nested deeper than {self.max_depth} levels", mark)
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open_anchors.discard(anchor)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        digits = len(str(node.value).lstrip("+-"))
        if digits > MAX_INT_DIGITS:  # int() of thousands of digits is slow, then refused by Python itself
            raise _Refused(None, None, f"a number of {digits} digits (at most {MAX_INT_DIGITS})", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: SafeConstructor reports it
            if duplicate:
                raise _Refused(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)


class _AliasLoader(StrictLoader):
    allow_aliases = True


def _expanded(node: Node, memo: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(nodes, depth) of ``node`` once its aliases are expanded; shared nodes are counted each time used."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = (1, 1)  # cycles are refused while composing; this only guards the recursion
    children: list[Node] = []
    if isinstance(node, SequenceNode):
        children = list(node.value)
    elif isinstance(node, MappingNode):
        children = [n for pair in node.value for n in pair]
    sizes = [_expanded(child, memo) for child in children]
    result = (1 + sum(s for s, _ in sizes), 1 + max((d for _, d in sizes), default=0))
    memo[id(node)] = result
    return result


def _marks(node: Node, path: tuple[str, ...], out: dict[tuple[str, ...], tuple[int, int]], depth: int = 0) -> None:
    if path not in out:
        out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if depth > MAX_DEPTH:
        return
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode):
                out.setdefault((*path, key.value), (key.start_mark.line + 1, key.start_mark.column + 1))
                _marks(value, (*path, key.value), out, depth + 1)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _marks(item, (*path, str(i)), out, depth + 1)


Marks = Mapping[tuple[str, ...], tuple[int, int]]  # field path -> (line, column), both from 1


def load_yaml(
    text: str, *, source: str, aliases: bool = False, hint: str = "", max_depth: int = MAX_DEPTH
) -> tuple[Any, Marks]:
    """One YAML document as plain data, and where each field path starts; InputError names source:line:column."""
    loader_class = _AliasLoader if aliases else StrictLoader
    try:
        loader = loader_class(text)  # its reader refuses control characters at once
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise InputError(
            f"{source} is not valid YAML: line {line}: character #x{exc.character:04x} is not allowed",
            hint=hint,
        ) from None
    loader.max_depth = max_depth
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        if aliases:
            nodes, depth = _expanded(node, {})
            if nodes > MAX_ALIAS_NODES or depth > max_depth:
                raise InputError(
                    f"{source}: its aliases expand to more than {MAX_ALIAS_NODES} values or {max_depth} levels",
                    hint=hint or "write the values out without YAML aliases",
                )
        data = loader.construct_document(node)
    except _Refused as exc:
        raise InputError(f"{source}: {_yaml_problem(exc)}", hint=hint) from None
    except yaml.MarkedYAMLError as exc:
        raise InputError(f"{source} is not valid YAML: {_yaml_problem(exc)}", hint=hint) from None
    except yaml.YAMLError as exc:  # the reader: control characters and the like
        raise InputError(f"{source} is not valid YAML: {exc}", hint=hint) from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply", hint=hint) from None
    except (ValueError, TypeError, OverflowError) as exc:  # a scalar PyYAML cannot construct
        raise InputError(f"{source} is not valid YAML: {exc}", hint=hint) from None
    finally:
        loader.dispose()
    marks: dict[tuple[str, ...], tuple[int, int]] = {}
    _marks(node, (), marks)
    check_plain(data, source=source, marks=marks, hint=hint, max_depth=max_depth)
    return data, marks


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = exc.problem or exc.context or "not valid YAML"
    if exc.context and exc.problem and not isinstance(exc, _Refused):
        what = f"{exc.context}, {exc.problem}"
    return f"{where}{what}"


# ---- JSON -----------------------------------------------------------------------------------


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def load_json(text: str, *, source: str, hint: str = "", max_depth: int = JSON_MAX_DEPTH) -> Any:
    """One JSON document as plain data: no duplicate keys, no NaN/Infinity, at most ``max_depth`` levels."""
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: line {exc.lineno}, column {exc.colno}: {exc.msg}", hint=hint) from None
    except ValueError as exc:
        raise InputError(f"{source}: {exc}", hint=hint) from None
    except RecursionError:  # the decoder's own guard; check_plain holds the rest to max_depth
        raise InputError(f"{source}: nested deeper than {max_depth} levels", hint=hint) from None
    check_plain(data, source=source, hint=hint, max_depth=max_depth)
    return data


# ---- plain data -----------------------------------------------------------------------------


def check_plain(
    data: Any, *, source: str, marks: Marks | None = None, hint: str = "", max_depth: int = MAX_DEPTH
) -> None:
    """``data`` is maps with string keys, lists, strings, finite numbers, booleans and nulls, ``max_depth`` deep."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > max_depth:
            raise InputError(f"{source}: {_where(path, marks)}nested deeper than {max_depth} levels", hint=hint)
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InputError(
                        f"{source}: {_where(path, marks)}{field_path(path) or '(top)'}: keys must be text, "
                        f"found a {_type_name(key)} key",
                        hint=hint,
                    )
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{source}: {_where(path, marks)}{field_path(path)}: expected a finite number", hint=hint)
        elif not (value is None or isinstance(value, str | int | float | bool)):
            raise InputError(
                f"{source}: {_where(path, marks)}{field_path(path) or '(top)'}: expected text, a number, a boolean, "
                f"a list or a map, found {_type_name(value)}",
                hint=hint,
            )


def _type_name(value: object) -> str:
    names: dict[type, str] = {bytes: "binary data", set: "a set"}
    return names.get(type(value), type(value).__name__)


def field_path(loc: Sequence[str | int]) -> str:
    """``("hops", 0, "to")`` -> ``hops[0].to``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _where(loc: Sequence[str | int], marks: Marks | None) -> str:
    if not marks:
        return ""
    parts = tuple(str(p) for p in loc)
    for end in range(len(parts), 0, -1):
        if parts[:end] in marks:
            line, column = marks[parts[:end]]
            return f"line {line}, column {column}: "
    return ""


def validation_error(
    exc: ValidationError,
    *,
    source: str,
    marks: Marks | None = None,
    hint: str = "",
    limit: int = 10,
    aliases: Mapping[str, str] | None = None,
) -> InputError:
    """One InputError listing each field path -> what was expected (the rejected values are never shown).

    ``aliases`` renames fields to the names the file uses (``from_`` -> ``from``).
    """
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [(aliases or {}).get(p, p) if isinstance(p, str) else p for p in error["loc"]]
        what = "missing" if error["type"] == "missing" else error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            what = "not a known field"
        problems.append(f"{_where(loc, marks)}{field_path(loc) or '(top)'}: {what}")
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return InputError(f"{source} is invalid: " + "; ".join(problems[:limit]) + more, hint=hint)


# ---- files ----------------------------------------------------------------------------------


def read_yaml_file(
    path: Path, *, what: str, cap: int = SPEC_CAP, aliases: bool = False, hint: str = ""
) -> tuple[Any, Marks]:
    """A YAML file's plain data and field marks; every problem an InputError naming ``what`` and ``path``."""
    text = read_text(path, what=what, cap=cap, hint=hint)
    return load_yaml(text, source=f"{what} {path}", aliases=aliases, hint=hint)


def read_json_file(path: Path, *, what: str, cap: int = DOCUMENT_CAP, hint: str = "") -> Any:
    """A JSON file's plain data; every problem an InputError naming ``what`` and ``path``."""
    text = read_text(path, what=what, cap=cap, hint=hint)
    return load_json(text, source=f"{what} {path}", hint=hint)


def json_digest(data: Any) -> str:
    """sha256 of ``data``'s canonical JSON (sorted keys, no spaces): the same data always gives the same digest."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

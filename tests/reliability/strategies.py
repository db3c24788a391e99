"""Hypothesis strategies for hostile inputs: nasty strings, numbers, shapes, and mutations of good documents."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import strategies as st

NASTY_STRINGS = [
    "",
    " ",
    "[bold]oops",
    "[/]",
    "[link=https://example.com]x[/link]",
    "[red]stable-2.14.10[/red]",
    "\x1b[31mred\x1b[0m",
    "\x1b]0;title\x07",
    "\x07\x08\x7f",
    "line\nbreak",
    "tab\there",
    "\u202egnp.exe",
    "\ufeffstable-2.14.10",
    "stable-\uff12.14.10",
    "stable-2.١٤.10",
    "edge-٢٤.8.2",
    "stable-2.14.10\u0000",
    "ǅungla",
    "日本語",
    "😀" * 3,
    "$(touch /tmp/upgrader-pwned)",
    "`id`",
    "${HOME}",
    "'; rm -rf / #",
    "../../../../etc/passwd",
    "-",
    "--help",
    "~",
    "*",
    "null",
    "True",
    "1:00",
    "1e50h",
    "9" * 400 + "s",
    "0x10",
    "-1",
    "NaN",
    "x" * 5000,
    "stable-2." + "9" * 5000 + ".1",
]

GOOD_VERSIONS = [
    "stable-2.10.2",
    "stable-2.11.5",
    "stable-2.12.6",
    "stable-2.13.7",
    "stable-2.14.10",
    "edge-24.2.4",
    "edge-24.8.2",
    "enterprise-2.14.10",
    "enterprise-2.15.5-1",
]

nasty_text = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
)

huge_int = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, 2**64 + 1, 10**400]),
)

scalar = st.one_of(
    st.none(),
    st.booleans(),
    huge_int,
    st.floats(allow_nan=True, allow_infinity=True),
    nasty_text,
)


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


nasty_value = st.one_of(
    scalar,
    st.lists(scalar, max_size=4),
    st.dictionaries(nasty_text, scalar, max_size=4),
    st.integers(min_value=50, max_value=400).map(_deep),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += _paths(value, (*prefix, index))
    return found


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


RETYPE = {
    str: [0, [], {}, None, True],
    int: ["1", 1.5, [], None, 10**400],
    float: ["x", 0, None],
    bool: ["yes", 0, None],
    list: [{}, "a", 0, None],
    dict: [[], "a", 0, None],
    type(None): [{}, [], "", 0],
}


@st.composite
def mutated(draw: st.DrawFn, doc: Any, max_mutations: int = 3) -> Any:
    """``doc`` (JSON-like) with 1-3 structural mutations: drop, replace, retype or duplicate a node."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(min_value=1, max_value=max_mutations))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["drop", "replace", "retype", "duplicate", "add"]))
        if not path:
            if op in ("replace", "retype"):
                doc = draw(nasty_value)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "drop":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(nasty_value)
        elif op == "retype":
            parent[key] = draw(st.sampled_from(RETYPE.get(type(parent[key]), [None])))
        elif op == "duplicate":
            if isinstance(parent, list):
                parent.append(parent[key])
            else:
                parent[f"{key}{draw(st.sampled_from(['', '_', 'X']))}"] = parent[key]
        elif isinstance(parent, dict):
            parent[draw(nasty_text)] = draw(nasty_value)
        else:
            parent.insert(key, draw(nasty_value))
    return doc


ALIAS_BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)


@st.composite
def text_mutated(draw: st.DrawFn, text: str) -> bytes:  # noqa: PLR0911 - one return per kind of damage
    """``text`` damaged as bytes: truncated, a line duplicated, junk or an alias trick inserted, bad encoding."""
    op = draw(st.sampled_from(["truncate", "dup-line", "insert", "alias-bomb", "anchor", "encoding", "indent", "deep"]))
    lines = text.splitlines(keepends=True)
    if op == "truncate":
        return text.encode()[: draw(st.integers(min_value=0, max_value=len(text.encode())))]
    if op == "dup-line" and lines:
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        return "".join([*lines[: i + 1], lines[i], *lines[i + 1 :]]).encode()
    if op == "insert":
        i = draw(st.integers(min_value=0, max_value=len(text)))
        junk = draw(
            st.sampled_from(
                [
                    "\x00",
                    "\x1b[2J",
                    "[bold]",
                    "\t",
                    "{",
                    "}",
                    ":",
                    "&a",
                    "*a",
                    "!!python/object:os.system",
                    "%YAML 9.9\n---\n",
                    "\r",
                    "\ufeff",
                ]
            )
        )
        return (text[:i] + junk + text[i:]).encode()
    if op == "alias-bomb":
        return (ALIAS_BOMB + text).encode()
    if op == "anchor":
        return (text + "\nloop: &loop [*loop]\n").encode()
    if op == "encoding":
        return draw(st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\x80\x81"])) + text.encode()
    if op == "deep":
        depth = draw(st.integers(min_value=100, max_value=5000))
        return (text + "\nextra: " + "[" * depth + "]" * depth + "\n").encode()
    return (" " + text.replace("\n", "\n ")).encode()


def yaml_dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode()

"""Built-in detectors for Python source: inside a comment or a string, keywords, indentation
level, bracket nesting depth, the name being defined, and the role of each colon, comma and
bracket (the essay's disambiguation features).

They share one lexical pass over the window's text (`scan`). A window is a fragment: the pass
reads it from its first character, so a window that starts inside a string or a bracket reads
that part as code outside one until the string closes; depth is therefore counted relative to the
shallowest point of the window, and the window's first line is read as if it started the line.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

import numpy as np

from labeller.detect.detector import Detector, Window

VERSION = "builtin-v1"
OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in OPENERS.items()}
KEYWORD = re.compile(r"\b(?:" + "|".join(keyword.kwlist) + r")\b")
_IDENT = r"[A-Za-z_]\w*"
DEFINED = re.compile(
    rf"\b(?:def|class)\s+({_IDENT})"
    rf"|^[ \t]*({_IDENT})[ \t]*(?::[^=\n]*)?=(?!=)"
    rf"|\bfor\s+({_IDENT})(?=\s*(?:,|\bin\b))"
    rf"|\b(?:as|global|nonlocal)\s+({_IDENT})",
    re.MULTILINE,
)
# A word before `(` or `[` that makes it grouping or a literal, not a call or an index.
_NOT_CALLEE = frozenset(keyword.kwlist) - {"True", "False", "None"}
BLOCK_STARTERS = re.compile(
    r"^[ \t]*(?:if|elif|else|for|while|try|except|finally|with|def|class|async|match|case)\b"
)


@dataclass(frozen=True)
class Scan:
    """Per character of a window's text: inside a comment, inside a string, bracket depth
    (relative to the window's shallowest point), indentation level of its line, and for
    brackets, colons and commas their role (empty where none)."""

    comment: np.ndarray
    string: np.ndarray
    depth: np.ndarray
    indent: np.ndarray
    role: np.ndarray  # of str

    @property
    def code(self) -> np.ndarray:
        return ~(self.comment | self.string)


def _opener_role(text: str, i: int) -> str:
    """`(` after a name or a closing bracket is a call, `[` there an index; else grouping or a
    literal."""
    j = i - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    word = re.search(r"\w+$", text[: j + 1])
    follows_value = j >= 0 and (
        text[j] in ")]}\"'" or (word is not None and word.group() not in _NOT_CALLEE)
    )
    if text[i] == "(":
        return "call" if follows_value else "group"
    if text[i] == "[":
        return "index" if follows_value else "list"
    return "brace"


def _colon_role(text: str, i: int, enclosing: str, scope_start: int, line_start: int) -> str:
    """slice, dict, lambda, annotation or block, from the innermost bracket and the line."""
    if enclosing == "index":
        return "slice"
    if enclosing in ("dict", "set", "brace"):
        return "dict"
    if re.search(r"\blambda\b", text[scope_start:i]):
        return "lambda"
    if enclosing:
        return "annotation"
    if BLOCK_STARTERS.match(text[line_start:i]):
        return "block"
    rest = text[i + 1 :].split("\n", 1)[0].strip()
    return "block" if rest == "" or rest.startswith("#") else "annotation"


def scan(text: str) -> Scan:
    """One pass over the text: strings (any prefix, triple or single quotes), comments,
    bracket roles and depth, indentation."""
    n = len(text)
    comment = np.zeros(n, dtype=bool)
    string = np.zeros(n, dtype=bool)
    depth = np.zeros(n, dtype=np.int64)
    indent = np.zeros(n, dtype=np.int64)
    role = [""] * n
    stack: list[tuple[int, str]] = []  # (position of the opener, its role)
    level, line_start, i = 0, 0, 0
    at_indent = True
    current_indent = 0

    while i < n:
        c = text[i]
        if c == "\n":  # a blank line's newline: its indentation counted in levels too
            depth[i], indent[i] = level, current_indent // 4 if at_indent else current_indent
            line_start, at_indent, current_indent = i + 1, True, 0
            i += 1
            continue
        if at_indent:
            if c in " \t":
                current_indent += 4 if c == "\t" else 1
                depth[i], indent[i] = level, current_indent // 4
                i += 1
                continue
            at_indent = False
            current_indent //= 4
        indent[i], depth[i] = current_indent, level
        if c == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            comment[i:end] = True
            depth[i:end], indent[i:end] = level, current_indent
            i = end
            continue
        if c in "'\"":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else c
            prefix = re.search(r"[rRbBuUfF]*$", text[line_start:i])
            raw = prefix is not None and "r" in prefix.group().lower()
            j = i + len(quote)
            while j < n:
                if text[j] == "\\" and not raw:
                    j += 2
                    continue
                if text.startswith(quote, j):
                    j += len(quote)
                    break
                if text[j] == "\n" and len(quote) == 1:
                    break
                j += 1
            j = min(j, n)
            string[i:j] = True
            depth[i:j], indent[i:j] = level, current_indent
            newline = text.rfind("\n", i, j)
            if newline >= 0:  # a triple-quoted string ran over lines
                line_start, at_indent, current_indent = j, False, 0
            i = j
            continue
        if c in OPENERS:
            kind = _opener_role(text, i)
            stack.append((i, kind))
            role[i] = kind
            level += 1
        elif c in CLOSERS:
            if stack and text[stack[-1][0]] == CLOSERS[c]:
                start, kind = stack.pop()
                if kind in ("brace", "set", "dict"):
                    kind = "dict" if kind == "dict" or text[start + 1 : i].strip() == "" else "set"
                    role[start] = kind
                role[start] = role[i] = kind
            level -= 1
            depth[i] = level
        elif c in ":,":
            enclosing = stack[-1][1] if stack else ""
            if c == ":":
                scope = max(line_start, stack[-1][0] + 1) if stack else line_start
                colon = _colon_role(text, i, enclosing, scope, line_start)
                role[i] = "colon-" + colon
                if colon == "dict" and stack:
                    stack[-1] = (stack[-1][0], "dict")
                    role[stack[-1][0]] = "dict"
            else:
                role[i] = "comma-" + {
                    "call": "call",
                    "group": "tuple",
                    "": "tuple",
                    "list": "list",
                    "index": "index",
                }.get(enclosing, "dict" if enclosing == "dict" else "set")
        i += 1
    for start, kind in stack:  # opened in the window, closed after it
        if kind == "brace":
            role[start] = "set"
    if n:
        depth -= depth.min()
    return Scan(comment, string, depth, indent, np.array(role, dtype=str))


_SCANS: dict[str, Scan] = {}


def cached_scan(text: str) -> Scan:
    """The scan of a text, kept for the next detector on the same window (one window at a
    time: the cache holds only the latest)."""
    if text not in _SCANS:
        _SCANS.clear()
        _SCANS[text] = scan(text)
    return _SCANS[text]


def _mask_detector(name: str, description: str, part: str) -> Detector:
    def function(window: Window) -> list[float]:
        return window.from_chars(getattr(cached_scan(window.text), part).astype(float))

    return Detector(name, description, function, f"{VERSION}:{name}")


def _code_regex(name: str, description: str, pattern: re.Pattern[str]) -> Detector:
    """Matches (their first non-empty group, if any) that start in code, not in a string or
    comment."""

    def function(window: Window) -> list[float]:
        code = cached_scan(window.text).code
        spans = []
        for m in pattern.finditer(window.text):
            group = next((g for g in range(1, len(m.groups()) + 1) if m.group(g)), 0)
            start, end = m.span(group)
            if code[start]:
                spans.append((start, end))
        return window.from_spans(spans)

    return Detector(name, description, function, f"{VERSION}:{name}")


def _role_detector(name: str, description: str, *roles: str) -> Detector:
    def function(window: Window) -> list[float]:
        return window.from_chars(np.isin(cached_scan(window.text).role, roles))

    return Detector(name, description, function, f"{VERSION}:{name}")


def _graded(name: str, description: str, part: str) -> Detector:
    def function(window: Window) -> list[float]:
        s = cached_scan(window.text)
        return window.from_chars(getattr(s, part).astype(float))

    return Detector(name, description, function, f"{VERSION}:{name}")


DETECTORS = [
    _mask_detector(
        "python-comment", "inside a Python comment (# to the end of the line)", "comment"
    ),
    _mask_detector("python-string", "inside a Python string literal, quotes included", "string"),
    _code_regex(
        "python-keyword",
        "a Python keyword (def, if, return, ...) outside strings and comments",
        KEYWORD,
    ),
    _graded(
        "indent-level",
        "graded: the indentation level of the token's line (4 spaces or a tab a level)",
        "indent",
    ),
    _graded(
        "bracket-depth",
        "graded: bracket nesting depth, relative to the window's shallowest point",
        "depth",
    ),
    _code_regex(
        "name-defined",
        "the name being defined: after def/class, an assignment target, a for or as variable",
        DEFINED,
    ),
    _role_detector("colon-block", "a colon opening a block (if/for/def/class ...:)", "colon-block"),
    _role_detector(
        "colon-annotation",
        "a colon in a type annotation (x: int, def f(a: str))",
        "colon-annotation",
    ),
    _role_detector("colon-dict", "a colon between a dict key and its value", "colon-dict"),
    _role_detector("colon-slice", "a colon in a slice (a[1:2])", "colon-slice"),
    _role_detector("colon-lambda", "the colon of a lambda", "colon-lambda"),
    _role_detector(
        "comma-call", "a comma between a call's or definition's arguments", "comma-call"
    ),
    _role_detector("comma-tuple", "a comma in a tuple (bare or in parentheses)", "comma-tuple"),
    _role_detector("comma-list", "a comma in a list literal", "comma-list"),
    _role_detector("comma-dict", "a comma between dict items", "comma-dict"),
    _role_detector(
        "paren-call", "a call's (or definition's) parenthesis, opening or closing", "call"
    ),
    _role_detector("paren-group", "a grouping or tuple parenthesis, opening or closing", "group"),
    _role_detector(
        "bracket-index", "an indexing/subscript square bracket, opening or closing", "index"
    ),
    _role_detector("bracket-list", "a list literal's square bracket, opening or closing", "list"),
    _role_detector("brace-dict", "a dict's curly brace, opening or closing", "dict"),
    _role_detector("brace-set", "a set's curly brace, opening or closing", "set"),
]

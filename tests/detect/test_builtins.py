"""Every built-in detector on hand-written token sequences: which tokens it marks (or, graded,
which value each gets). A test below checks every built-in has a case here."""

from __future__ import annotations

import pytest

from labeller.detect.registry import builtins

# name -> (tokens, expected values per token): 1/0 marks or graded values.
CODE = ["def", " area", "(", "r", ":", " float", ")", ":", "\n", "    ", "return", " r", "\n"]
CASES: dict[str, tuple[list[str], list[float]]] = {
    "start-of-line": (
        ["a", " b", "\n", "  ", "cd", " e", "\n", "f"],
        [0, 0, 0, 0, 1, 0, 0, 1],
    ),
    "end-of-sentence": (
        ["It", " works", ".", " See", " e", "g", " 3", ".", "5", "!", "\n"],
        [0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0],
    ),
    "number": (
        ["x", "1", " =", " 42", " and", " 3", ".", "14", " or", " 1", ",", "000"],
        [0, 0, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1],
    ),
    "year": (
        [" in", " 1999", " and", " 2023", ",", " not", " 12345", " or", " 1066"],
        [0, 1, 0, 1, 0, 0, 0, 0, 0],
    ),
    "date": (
        [
            " on",
            " 2023",
            "-",
            "01",
            "-",
            "31",
            " or",
            " Jan",
            " 5",
            ",",
            " 2020",
            " and",
            " 5",
            " apples",
        ],
        [0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0],
    ),
    "phone-number": (
        [" call", " +", "44", " 20", " 7946", " 0958", " or", " 12", " apples"],
        [0, 1, 1, 1, 1, 1, 0, 0, 0],
    ),
    "capitalised-word": (
        ["The", " cat", " met", " Alice", ".", " Then", " Bob", " left", "\n", "Next"],
        [0, 0, 0, 1, 0, 0, 1, 0, 0, 0],
    ),
    "end-of-text": (
        ["end", ".", "<|endoftext|>", "Start", " <s>"],
        [0, 0, 1, 0, 1],
    ),
    "split-token": (
        [" Cl", "aire", " went", " home", "work", "s", " 4", "x"],
        [0, 1, 0, 0, 1, 1, 0, 0],
    ),
    "python-comment": (
        ["x", " =", " 1", "  #", " one", " two", "\n", "y", " =", ' "#', ' no"'],
        [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0],
    ),
    "python-string": (
        ["s", " =", ' "', "a", " b", '"', " +", " '''", "x", "\n", "y", "'''", " #", " '"],
        [0, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0],
    ),
    "python-keyword": (
        ["if", " x", " is", " None", ":", " print", "(", '"', "if", '"', ")"],
        [1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ),
    "indent-level": (
        ["if", " x", ":", "\n", "    ", "if", " y", ":", "\n", "        ", "z", "\n", "w"],
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 0],
    ),
    "bracket-depth": (
        ["f", "(", "a", "[", "1", "]", ",", " b", ")", " +", " 2"],
        [0, 0, 1, 1, 2, 1, 1, 1, 0, 0, 0],
    ),
    "name-defined": (
        [
            "def",
            " area",
            "(",
            "r",
            "):",
            "\n",
            "    ",
            "total",
            " =",
            " r",
            "\n",
            "for",
            " i",
            " in",
        ],
        [0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
    ),
    "colon-block": (CODE, [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
    "colon-annotation": (CODE, [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
    "colon-dict": (
        ["d", " =", " {", "1", ":", " a", "[", "1", ":", "]", "}"],
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
    ),
    "colon-slice": (
        ["d", " =", " {", "1", ":", " a", "[", "1", ":", "]", "}"],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    ),
    "colon-lambda": (
        ["f", " =", " lambda", " x", ":", " x", "\n", "if", " f", ":"],
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
    ),
    "comma-call": (
        ["f", "(", "a", ",", " b", ")", " +", " [", "1", ",", " 2", "]"],
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
    "comma-tuple": (
        ["x", ",", " y", " =", " (", "1", ",", " 2", ")", " +", " f", "(", "a", ",", "b", ")"],
        [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
    "comma-list": (
        ["f", "(", "a", ",", " b", ")", " +", " [", "1", ",", " 2", "]"],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
    ),
    "comma-dict": (
        ["{", "1", ":", " 2", ",", " 3", ":", " 4", "}", " |", " {", "1", ",", " 2", "}"],
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ),
    "paren-call": (
        ["f", "(", "x", ")", " *", " (", "a", " +", " b", ")"],
        [0, 1, 0, 1, 0, 0, 0, 0, 0, 0],
    ),
    "paren-group": (
        ["f", "(", "x", ")", " *", " (", "a", " +", " b", ")", " if", " (", "c", ")"],
        [0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1],
    ),
    "bracket-index": (
        ["a", "[", "0", "]", " +", " [", "1", "]", " +", " b", "()", "[", "2", "]"],
        [0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],
    ),
    "bracket-list": (
        ["a", "[", "0", "]", " +", " [", "1", "]", " in", " [", "x", "]"],
        [0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1],
    ),
    "brace-dict": (
        ["{", "1", ":", " 2", "}", " |", " {", "1", ",", " 2", "}", " |", " {}"],
        [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
    ),
    "brace-set": (
        ["{", "1", ":", " 2", "}", " |", " {", "1", ",", " 2", "}", " |", " {}"],
        [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
    ),
    "hex": (
        [" 0x", "1F", " #", "a0b1c2", " deadbeef", "01", " cafe", " 1234"],
        [1, 1, 1, 1, 1, 1, 0, 0],
    ),
    "base64": (
        [" token", " aGVsbG8", "gd29y", "bGQhIQ", "==", " hello", " world"],
        [0, 1, 1, 1, 1, 0, 0],
    ),
    "html-tag": (
        ["<", "div", ' class="a"', ">", "hi", " <", "/", "div", ">", " 3", " <", " 4"],
        [1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0],
    ),
    "html-closing-tag": (
        ["<", "p", ">", "hi", "</", "p", ">"],
        [0, 0, 0, 0, 1, 1, 1],
    ),
    "latex-command": (
        ["$", "\\", "left", "(", "x", "\\", "right", ")", "$", " left"],
        [0, 1, 1, 0, 0, 1, 1, 0, 0, 0],
    ),
    "latex-section": (
        ["\\", "section", "{", "Intro", "}", " \\", "sec", "ret", " \\", "subsection", "*"],
        [1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1],
    ),
    "first-person": (
        ["I", " think", " we", " saw", " it", ",", " said", " my", " friend", " Italy"],
        [1, 0, 1, 0, 0, 0, 0, 1, 0, 0],
    ),
    "second-person": (
        ["You", " and", " your", " dog", " youth"],
        [1, 0, 1, 0, 0],
    ),
    "third-person": (
        ["He", " gave", " her", " its", " toy", " hello", " they", " there"],
        [1, 0, 1, 1, 0, 0, 1, 0],
    ),
    "male-pronoun": (
        ["He", " gave", " her", " his", " hat", " here"],
        [1, 0, 0, 1, 0, 0],
    ),
    "female-pronoun": (
        ["He", " gave", " her", " his", " hat", " she", " shed"],
        [0, 0, 1, 0, 0, 1, 0],
    ),
    "neutral-pronoun": (
        ["They", " gave", " it", " to", " them", " item"],
        [1, 0, 1, 0, 1, 0],
    ),
    "nt-contraction": (
        ["I", " can", "'t", " and", " won", "’t", " ant", " t"],
        [0, 1, 1, 0, 1, 1, 0, 0],
    ),
}

BUILTINS = {d.name: d for d in builtins()}


def test_every_builtin_has_a_hand_written_case() -> None:
    assert set(CASES) == set(BUILTINS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_on_hand_written_tokens(name: str) -> None:
    tokens, expected = CASES[name]
    assert len(tokens) == len(expected), "the case itself is malformed"
    got = BUILTINS[name].values(tokens)
    shown = [f"{t!r}={v:g}" for t, v in zip(tokens, got, strict=True)]
    assert got == [float(v) for v in expected], shown


def test_builtins_have_unique_names_descriptions_and_definitions() -> None:
    detectors = builtins()
    assert len({d.name for d in detectors}) == len(detectors)
    assert all(d.description and "\n" not in d.description for d in detectors)
    assert len({d.definition for d in detectors}) == len(detectors)

"""Choosing detectors: names, `all`, `--regex NAME=PATTERN`, and user detectors from an installed
package's `labeller.detectors` entry points (a real dist-info on sys.path, not a patched
registry)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from labeller.detect.detector import DetectorError, Window
from labeller.detect.registry import builtins, parse_regex, resolve


def install_plugin(root: Path, package: str, entry_points: str, module: str) -> None:
    """A package installed the way pip leaves it: its module plus a dist-info folder (each test
    its own package name: Python keeps imported modules for the session)."""
    (root / f"{package}.py").write_text(textwrap.dedent(module))
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[labeller.detectors]\n" + textwrap.dedent(entry_points))


PLUGIN = """
    from labeller.detect.detector import Detector


    def shouting(window):
        '''an all-capitals word of two or more letters'''
        return [float(t.strip().isupper() and len(t.strip()) > 1) for t in window.tokens]


    vowel = Detector(
        "vowel-start",
        "a token starting with a vowel",
        lambda w: [float(t.strip()[:1].lower() in "aeiou") for t in w.tokens],
    )
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(
        tmp_path,
        "userdetectors",
        "shouting = userdetectors:shouting\nvowel-start = userdetectors:vowel\n",
        PLUGIN,
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_no_names_and_no_regex_is_every_detector() -> None:
    assert [d.name for d in resolve([], [])] == [d.name for d in builtins()]


def test_only_a_regex_is_just_that_regex_and_all_adds_the_rest() -> None:
    (only,) = resolve([], ["digits=[0-9]+"])
    assert only.name == "digits"
    both = resolve(["all"], ["digits=[0-9]+"])
    assert [d.name for d in both] == [*(d.name for d in builtins()), "digits"]


def test_named_detectors_come_in_the_order_asked() -> None:
    assert [d.name for d in resolve(["year", "number"], [])] == ["year", "number"]


def test_a_regex_marks_every_token_overlapping_a_match() -> None:
    detector = parse_regex("version=v[0-9]+\\.[0-9]+")
    tokens = ["see", " v", "1", ".", "2", " and", " v", "3", " vintage"]
    assert detector.values(tokens) == [0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert detector.definition == "regex:v[0-9]+\\.[0-9]+"
    assert "v[0-9]+" in detector.description


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("digits", "NAME=PATTERN"),
        ("digits=", "NAME=PATTERN"),
        ("Bad Name=x", "name must be"),
        ("broken=[0-9", "does not compile"),
        ("number=[0-9]", "registered detector has that name"),
    ],
)
def test_a_bad_regex_is_one_line_saying_what_to_do(spec: str, says: str) -> None:
    with pytest.raises(DetectorError) as caught:
        resolve([], [spec])
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_name_points_at_the_list() -> None:
    with pytest.raises(DetectorError, match="labeller detect --list"):
        resolve(["no-such-detector"], [])


def test_an_entry_point_function_is_a_detector_described_by_its_docstring(plugin: None) -> None:
    found = {d.name: d for d in resolve([], [])}
    shouting = found["shouting"]
    assert shouting.description == "an all-capitals word of two or more letters"
    assert shouting.definition == "plugin:userdetectors:shouting"
    assert shouting.values(["the", " NASA", " A", " team"]) == [0, 1, 0, 0]
    assert found["vowel-start"].values(["an", " big", " owl"]) == [1, 0, 1]
    assert [d.name for d in resolve(["shouting"], [])] == ["shouting"]


BAD_PLUGINS = [
    ("quietdetectors", "quiet", "def quiet(w):\n    return [0.0] * len(w)\n", "no docstring"),
    (
        "clashdetectors",
        "number",
        "def number(window):\n    'digits'\n    return []\n",
        "clashes",
    ),
    ("brokendetectors", "broken", "import no_such_module_here\n", "failed to load"),
]


@pytest.mark.parametrize(("package", "entry", "source", "says"), BAD_PLUGINS)
def test_a_bad_plugin_is_refused_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    package: str,
    entry: str,
    source: str,
    says: str,
) -> None:
    install_plugin(tmp_path, package, f"{entry} = {package}:{entry}\n", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DetectorError) as caught:
        resolve([], [])
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_plugin_giving_the_wrong_number_of_values_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(
        tmp_path,
        "shortdetectors",
        "short = shortdetectors:short\n",
        "def short(window):\n    '''one value too few'''\n    return [0.0] * (len(window) - 1)\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    (short,) = [d for d in resolve([], []) if d.name == "short"]
    with pytest.raises(DetectorError, match="gave 2 values for 3 tokens"):
        short.values(["a", "b", "c"])


def test_window_offsets_cover_the_concatenated_text_and_byte_tokens_read_as_one_char() -> None:
    window = Window.of(["ab", "", "<0xC3>", "<0xA9>", " c"])
    assert window.text == "ab\ufffd\ufffd c"
    assert list(zip(window.starts, window.ends, strict=True)) == [
        (0, 2),
        (2, 2),
        (2, 3),
        (3, 4),
        (4, 6),
    ]
    assert window.from_spans([(1, 3)]) == [1, 0, 1, 0, 0]
    assert parse_regex("hexish=0x[0-9A-F]+").values(["<0xC3>"]) == [0]

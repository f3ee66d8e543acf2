"""Which detectors exist and how a name or a `--regex NAME=PATTERN` becomes one.

The stable API other stages call: `resolve(names, regexes)` and `Detector.values(tokens)`.
Built-ins come first, then detectors registered by installed packages under the entry point
group `labeller.detectors` (so a spaCy detector can live in a user's package without labeller
depending on spaCy). An entry point loads either a `Detector` or a function taking a `Window`
and returning one value per token, whose docstring's first line is its description.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.metadata import entry_points

from labeller.detect import general_code, python_code, syntax, text_features
from labeller.detect.detector import Detector, DetectorError, regex_detector

GROUP = "labeller.detectors"
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
ALL = "all"
REGEX = "regex:"  # a --regex detector's definition: this, then its pattern


def builtins() -> list[Detector]:
    """The built-in library: basic syntax, Python, general code, text."""
    return [
        *syntax.DETECTORS,
        *python_code.DETECTORS,
        *general_code.DETECTORS,
        *text_features.DETECTORS,
    ]


def _plugin(name: str, loaded: object, where: str) -> Detector:
    if isinstance(loaded, Detector):
        if loaded.name != name:
            raise DetectorError(
                f"entry point {name} ({where}) holds a detector named {loaded.name}: "
                "give the entry point the detector's name"
            )
        return (
            loaded
            if loaded.definition
            else Detector(name, loaded.description, loaded.function, f"plugin:{where}")
        )
    if callable(loaded):
        doc = (getattr(loaded, "__doc__", None) or "").strip()
        if not doc:
            raise DetectorError(
                f"detector {name} ({where}) has no docstring: its first line is the "
                "detector's description"
            )
        return Detector(name, doc.splitlines()[0], loaded, f"plugin:{where}")
    raise DetectorError(
        f"entry point {name} ({where}) is neither a Detector nor a function of a Window"
    )


def plugins() -> list[Detector]:
    """Detectors that installed packages register under `labeller.detectors`."""
    found = []
    for point in sorted(entry_points(group=GROUP), key=lambda p: p.name):
        try:
            loaded = point.load()
        except Exception as exc:  # a user's package failing to import is their error to see
            raise DetectorError(
                f"detector {point.name} ({point.value}) failed to load: {exc}"
            ) from exc
        found.append(_plugin(point.name, loaded, point.value))
    return found


def registered() -> list[Detector]:
    """Every named detector, built-ins first; a plugin cannot take a built-in's name."""
    detectors = builtins()
    names = {d.name for d in detectors}
    for plugin in plugins():
        if plugin.name in names:
            raise DetectorError(
                f"detector {plugin.name} from entry point {plugin.definition} clashes with "
                "another of that name: rename the entry point"
            )
        names.add(plugin.name)
        detectors.append(plugin)
    return detectors


def parse_regex(spec: str) -> Detector:
    """`NAME=PATTERN`: a detector that marks every token overlapping a match."""
    name, sep, pattern = spec.partition("=")
    name = name.strip()
    if not sep or not pattern:
        raise DetectorError(f"--regex {spec!r}: write it as NAME=PATTERN, e.g. digits='[0-9]+'")
    if not NAME.match(name):
        raise DetectorError(
            f"--regex {spec!r}: the name must be lower-case letters, digits, '-', '_' or '.'"
        )
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise DetectorError(f"--regex {name}: the pattern does not compile: {exc}") from exc
    return regex_detector(name, f"matches the regex {pattern}", compiled, f"{REGEX}{pattern}")


def from_definition(name: str, definition: str) -> Detector | None:
    """The detector a stored score was computed with, if it can still be made: a `--regex`
    from its pattern, a registered one when its definition is unchanged; else None."""
    if definition.startswith(REGEX):
        return parse_regex(f"{name}={definition.removeprefix(REGEX)}")
    found = next((d for d in registered() if d.name == name), None)
    return found if found is not None and found.definition == definition else None


def resolve(names: Sequence[str], regexes: Sequence[str]) -> list[Detector]:
    """The detectors a command asked for, in order: named ones (`all` for every registered
    detector) then `--regex` ones. Neither given: every registered detector."""
    known = {d.name: d for d in registered()}
    chosen: list[Detector] = []
    if not names and not regexes:
        names = [ALL]
    for name in names:
        if name == ALL:
            chosen.extend(known.values())
        elif name in known:
            chosen.append(known[name])
        else:
            raise DetectorError(
                f"unknown detector {name!r}: `labeller detect --list` shows them, "
                "or use --regex NAME=PATTERN"
            )
    for spec in regexes:
        detector = parse_regex(spec)
        if detector.name in known:
            raise DetectorError(
                f"--regex {detector.name}: a registered detector has that name; choose another"
            )
        chosen.append(detector)
    seen: dict[str, Detector] = {}
    for detector in chosen:
        if detector.name in seen and seen[detector.name] is not detector:
            raise DetectorError(f"two detectors are named {detector.name}: rename one")
        seen[detector.name] = detector
    return list(seen.values())

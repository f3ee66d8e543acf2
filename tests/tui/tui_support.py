"""A scanned, explained and scored tiny catalogue for the TUI tests, and pilot helpers.

The model is scanned under the relative name `tiny-solu-2l` from a working folder that also
holds `catalogue.db`, so screens (and snapshots) read the same on every machine. (A module, not
a conftest.py: a second conftest module would shadow the `conftest` other tests import.)

Each test module wires it up with a three-line `tui` fixture calling `environment`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from builders import scan_params
from textual.widgets import Select
from textual.widgets.select import InvalidSelectValueError

from labeller.catalogue import Catalogue
from labeller.tui.app import AnnotateApp, create_app
from labeller.tui.backend import LoadState
from labeller.tui.filter_bar import FilterBar
from labeller.tui.help_screen import HelpScreen

MODEL = "tiny-solu-2l"


_ROOTS: dict[tuple[Path, Path], Path] = {}


def _root(factory: pytest.TempPathFactory, model_dir: Path, corpus: Path) -> Path:
    """Built once per test process: the model folder and the scanned catalogue beside it."""
    from labeller.demo.build import scan_and_label_offline
    from labeller.model.loading import load_model

    key = (model_dir, corpus)
    if key in _ROOTS:
        return _ROOTS[key]
    root = factory.mktemp("tui")
    shutil.copytree(model_dir, root / MODEL)
    with contextlib.chdir(root):
        model = load_model(MODEL, device="cpu")
        params = scan_params(Path(MODEL), corpus, tokens=300)
        with Catalogue.open("catalogue.db", create=True) as catalogue:
            scan_and_label_offline(catalogue, model, params, batch_size=4, label_layers=[0])
    _ROOTS[key] = root
    return root


@dataclass
class Tui:
    """One test's working folder: a fresh copy of the catalogue beside the model."""

    workdir: Path

    def app(self, annotator: str = "alice") -> AnnotateApp:
        return create_app(Path("catalogue.db"), annotator)

    @contextlib.contextmanager
    def catalogue(self) -> Iterator[Catalogue]:
        """Another connection: another annotator, or the test's own eyes."""
        with Catalogue.open(self.workdir / "catalogue.db") as catalogue:
            yield catalogue


def environment(
    factory: pytest.TempPathFactory,
    model_dir: Path,
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Tui:
    root = _root(factory, model_dir, corpus)
    shutil.copy(root / "catalogue.db", tmp_path / "catalogue.db")
    os.symlink(root / MODEL, tmp_path / MODEL)
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LABELLER_LLM_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return Tui(tmp_path)


async def until(pilot, condition: Callable[[], object], timeout: float = 15.0) -> None:
    """Let the app run until `condition()` holds (workers post their results meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await pilot.pause(0.05)


async def choose_layer(pilot, bar: FilterBar, layer: int) -> None:
    """Pick a layer in the filter bar once its choices have loaded (a worker loads them,
    apart from the list's rows: on a busy machine the rows can come first)."""

    def chosen() -> bool:
        try:
            bar.query_one("#layer", Select).value = layer
        except InvalidSelectValueError:
            return False
        return True

    await until(pilot, chosen)


def model_ready(app: AnnotateApp) -> bool:
    state = app.model_states.get(MODEL)
    return state is not None and state.state is LoadState.READY


async def open_help(pilot) -> str:
    """Open help on the screen in front, check that it lists each active binding there (key and
    description on one line) and return its text."""
    app = pilot.app
    active = [
        (app.get_key_display(b), b.description)
        for b in (a.binding for a in app.screen.active_bindings.values())
        if b.description and not b.system
    ]
    await pilot.press("question_mark")
    await until(pilot, lambda: isinstance(app.screen, HelpScreen))
    lines = str(app.screen.query_one("Static").render()).splitlines()
    for key, description in active:
        assert any(key in line and line.endswith(description) for line in lines), key
    return "\n".join(lines)


def notifications(app: AnnotateApp) -> list[str]:
    return [n.message for n in app._notifications]

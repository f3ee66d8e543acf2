"""Snapshots of the main screens (pytest-textual-snapshot; `--snapshot-update` to accept)."""

from __future__ import annotations

import pytest
import tui_support as support
from textual.widgets import TextArea
from tui_support import until

from labeller.tui.examples_pane import ExamplesPane
from labeller.tui.experiment_view import ExperimentView
from labeller.tui.live_pane import LivePane
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.search_screen import SearchScreen


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


async def settled_list(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
    await until(pilot, lambda: support.model_ready(app))
    await pilot.pause(0.2)


async def neuron_page(pilot) -> NeuronScreen:
    await settled_list(pilot)
    await pilot.press("g", *"0.3", "enter")
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
    await until(pilot, lambda: app.screen.query_one(LivePane).trace is not None)
    await until(pilot, lambda: app.screen.query_one(ExamplesPane).ranks)  # ranks in the layer
    await pilot.pause(0.2)
    return app.screen


def test_neuron_list(tui, snap_compare):
    assert snap_compare(tui.app(), terminal_size=(100, 30), run_before=settled_list)


def test_neuron_list_at_80_by_24(tui, snap_compare):
    assert snap_compare(tui.app(), terminal_size=(80, 24), run_before=settled_list)


def test_neuron_page(tui, snap_compare):
    assert snap_compare(tui.app(), terminal_size=(100, 30), run_before=neuron_page)


def test_live_text(tui, snap_compare):
    async def typed(pilot) -> None:
        screen = await neuron_page(pilot)
        await pilot.press("3")
        screen.query_one("#live-text", TextArea).load_text("def value(self):\n    return")
        live = screen.query_one(LivePane)
        await until(pilot, lambda: live.trace and "".join(live.trace.tokens).endswith("return"))
        await pilot.press("escape")
        await pilot.pause(0.2)

    assert snap_compare(tui.app(), terminal_size=(100, 30), run_before=typed)


def test_perturbations(tui, snap_compare):
    async def perturbed(pilot) -> None:
        screen = await neuron_page(pilot)
        await pilot.press("4")
        views = list(screen.query(ExperimentView))
        await until(
            pilot,
            lambda: all("base" in str(v.render()) or "full" in str(v.render()) for v in views),
            timeout=30,
        )
        await pilot.pause(0.2)

    assert snap_compare(tui.app(), terminal_size=(100, 40), run_before=perturbed)


def test_search_across_neurons(tui, snap_compare):
    async def searched(pilot) -> None:
        await settled_list(pilot)
        await pilot.press("ctrl+f")
        app = pilot.app
        await until(pilot, lambda: isinstance(app.screen, SearchScreen))
        screen = app.screen
        screen.query_one("#search-text").value = "def value(self): return"
        await until(pilot, lambda: screen.result is not None)
        await pilot.press("tab", "tab")  # to the overall table
        await pilot.pause(0.2)

    assert snap_compare(tui.app(), terminal_size=(100, 30), run_before=searched)

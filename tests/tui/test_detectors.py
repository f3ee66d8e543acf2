"""Detectors in the TUI: the neuron page lists the best ones beside the labels, and `D` turns
the highlighted one into a proposed label linked to it and scored by it."""

from __future__ import annotations

import pytest
import tui_support as support
from click.testing import CliRunner
from textual.widgets import DataTable, Input
from tui_support import notifications, until

from labeller.catalogue.browse import SortKey
from labeller.cli import cli
from labeller.records import PRIMARY_METHOD, Split
from labeller.tui.labels_pane import LabelsPane
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.neuron_table import NeuronTable

pytestmark = pytest.mark.anyio


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    env = support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)
    ran = CliRunner().invoke(
        cli, ["detect", "--db", "catalogue.db", "--layer", "0", "--neurons", "3"]
    )
    assert ran.exit_code == 0, ran.output
    return env


async def test_the_page_lists_detectors_and_d_proposes_the_highlighted_one(tui):
    app = tui.app("carol")
    async with app.run_test(size=(110, 40), notifications=True) as pilot:
        await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
        await pilot.press("g", *"0.3", "enter")
        await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
        screen = app.screen
        await pilot.press("2")
        pane = screen.query_one(LabelsPane)
        table = pane.query_one("#detectors", DataTable)
        best = screen.page.view.detectors
        assert table.display and table.row_count == min(8, len(best))
        assert str(table.get_row_at(0)[0]) == best[0].name
        table.move_cursor(row=1)
        chosen = best[1]
        seen = screen.page.version
        await pilot.press("D")
        await until(pilot, lambda: screen.page.version > seen)
        await until(pilot, lambda: screen.selected is not None and screen.selected.scores)
        label = screen.selected
        assert (label.text, label.source) == (chosen.description, f"detector:{chosen.name}")
        assert label.annotator == "carol" and label.prompt_version == chosen.definition
        primary = next(s for s in label.scores if s.method is PRIMARY_METHOD)
        assert primary.split is Split.VALID and primary.score == pytest.approx(chosen.score)
        with tui.catalogue() as catalogue:
            history = catalogue.history(catalogue.neuron_ref(None, 0, 3))
        assert (history[-1].action, history[-1].annotator) == ("propose", "carol")
        assert history[-1].after is not None and history[-1].after.source == label.source
        table.move_cursor(row=1)
        await pilot.press("D")
        await until(pilot, lambda: any("already a label" in n for n in notifications(app)))


async def test_the_list_filters_by_a_detector_and_sorts_by_it(tui):
    ran = CliRunner().invoke(cli, ["detect", "--db", "catalogue.db", "--regex", "e=e"])
    assert ran.exit_code == 0, ran.output
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: isinstance(screen, NeuronListScreen) and screen.rows)
        box = screen.query_one("#stats", Input)
        box.focus()
        await pilot.press(*"d:e>0")
        await until(pilot, lambda: screen.query_state.ranges and not screen.busy, timeout=5)
        assert screen.rows and all(r.detector is not None and r.detector > 0 for r in screen.rows)
        screen.query_one(NeuronTable).focus()
        for _ in range(10):  # past the 6 other columns, cos, kurt, skew: the detector named
            await pilot.press("s")
        await until(pilot, lambda: screen.query_state.sort is SortKey.DETECTOR and not screen.busy)
        scores = [r.detector for r in screen.rows]
        assert scores == sorted(scores, reverse=True)  # best match first
        table = screen.query_one(NeuronTable)
        assert str(list(table.columns.values())[4].label).startswith("e")
        box.value = ""  # the detector is no longer named: the list stops sorting by it
        await until(pilot, lambda: screen.query_state.sort is SortKey.LAYER and not screen.busy)

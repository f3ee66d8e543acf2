"""The neuron list: open, filter, sort, page, jump, queue, help."""

from __future__ import annotations

import pytest
import tui_support as support
from tui_support import choose_layer, until

from labeller.catalogue.browse import NeuronStatus, SortKey
from labeller.tui import neuron_list
from labeller.tui.dialog import Dialog
from labeller.tui.filter_bar import FilterBar
from labeller.tui.goto_dialog import GotoDialog
from labeller.tui.help_screen import HelpScreen
from labeller.tui.model_picker import ModelPicker
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.neuron_table import NeuronTable
from labeller.tui.queue_dialog import QueueDialog

pytestmark = pytest.mark.anyio


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


def list_screen(app) -> NeuronListScreen:
    screen = app.screen
    assert isinstance(screen, NeuronListScreen)
    return screen


def shown(app) -> list[tuple[int, int]]:
    return [(r.layer, r.neuron) for r in list_screen(app).rows]


async def loaded(pilot) -> NeuronListScreen:
    await until(pilot, lambda: isinstance(pilot.app.screen, NeuronListScreen))
    screen = list_screen(pilot.app)
    await until(pilot, lambda: not screen.busy and screen.rows)
    return screen


async def test_opens_on_the_list_of_every_neuron(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded(pilot)
        assert screen.total == 96
        assert shown(app)[:3] == [(0, 0), (0, 1), (0, 2)]
        table = screen.query_one(NeuronTable)
        assert table.row_count == 96
        first = screen.rows[0]
        assert first.status is NeuronStatus.PROPOSED and first.label and first.score is not None
        assert screen.rows[48].status is NeuronStatus.UNLABELLED
        assert app.focused is table
        await until(pilot, lambda: support.model_ready(app))


async def test_filters_by_status_layer_text_and_score(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded(pilot)
        bar = screen.query_one(FilterBar)
        bar.query_one("#status").value = NeuronStatus.UNLABELLED
        await until(pilot, lambda: screen.total == 48 and not screen.busy)
        assert {layer for layer, _ in shown(app)} == {1}
        bar.query_one("#status").clear()
        await choose_layer(pilot, bar, 0)
        await until(pilot, lambda: screen.query_state.layer == 0 and not screen.busy)
        assert screen.total == 48
        word = screen.rows[3].label.split('"')[1].strip()
        await pilot.press("slash")
        assert app.focused is bar.query_one("#text")
        await pilot.press(*word)
        await until(pilot, lambda: screen.query_state.text == word and not screen.busy)
        assert all(word.lower() in r.label.lower() for r in screen.rows)
        await pilot.press("enter")
        assert app.focused is screen.query_one(NeuronTable)
        bar.query_one("#text").value = ""
        bar.query_one("#min").value = "0.5"
        bar.query_one("#max").value = "0.9"
        await until(pilot, lambda: screen.query_state.max_score == 0.9 and not screen.busy)
        assert screen.rows and all(0.5 <= r.score <= 0.9 for r in screen.rows)


async def test_sorts_by_key_and_by_header_click(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded(pilot)
        await pilot.press("s")  # layer -> neuron
        await until(pilot, lambda: screen.query_state.sort is SortKey.NEURON and not screen.busy)
        assert shown(app)[:2] == [(0, 0), (1, 0)]
        await pilot.press("s")  # -> max, largest first
        await until(pilot, lambda: screen.query_state.sort is SortKey.MAX and not screen.busy)
        maxes = [r.max for r in screen.rows]
        assert maxes == sorted(maxes, reverse=True)
        await pilot.press("r")
        await until(pilot, lambda: not screen.query_state.descending and not screen.busy)
        assert [r.max for r in screen.rows] == sorted(maxes)
        table = screen.query_one(NeuronTable)
        table.post_message(
            NeuronTable.HeaderSelected(
                table, table.columns["score"].key, 4, table.columns["score"].label
            )
        )
        await until(pilot, lambda: screen.query_state.sort is SortKey.SCORE and not screen.busy)
        scores = [r.score for r in screen.rows if r.score is not None]
        assert scores == sorted(scores)


async def test_pages_with_the_cursor_and_brackets(tui, monkeypatch):
    monkeypatch.setattr(neuron_list, "PAGE_SIZE", 10)
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded(pilot)
        assert len(screen.rows) == 10 and screen.total == 96
        await pilot.press(*["down"] * 9)
        assert screen.query_one(NeuronTable).cursor_row == 9
        await pilot.press("down")  # past the end: the next page, cursor on its first row
        await until(pilot, lambda: screen.query_state.offset == 10 and not screen.busy)
        assert shown(app)[0] == (0, 10)
        assert screen.query_one(NeuronTable).cursor_row == 0
        await pilot.press("up")
        await until(pilot, lambda: screen.query_state.offset == 0 and not screen.busy)
        assert screen.query_one(NeuronTable).cursor_row == 9
        await pilot.press("right_square_bracket", "right_square_bracket")
        await until(pilot, lambda: screen.query_state.offset == 20 and not screen.busy)
        assert shown(app)[0] == (0, 20)


async def test_goto_opens_a_neuron_and_back_returns(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("g", *"1.5", "enter")
        await until(pilot, lambda: isinstance(app.screen, NeuronScreen))
        screen = app.screen
        await until(pilot, lambda: screen.page is not None)
        assert (screen.page.view.layer, screen.page.view.neuron) == (1, 5)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, NeuronListScreen))


async def test_goto_a_missing_neuron_keeps_the_dialog_open_with_the_reason(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("g", *"7.3", "enter")
        dialog = app.screen
        assert isinstance(dialog, GotoDialog)
        problem = dialog.query_one("#problem")
        await until(pilot, lambda: "not been scanned" in str(problem.render()))
        await pilot.press("enter")  # the same target again: still there, still open
        await pilot.pause(0.2)
        assert app.screen is dialog
        await pilot.press(*["backspace"] * 3, *"1.900", "enter")
        await until(pilot, lambda: "has no neuron 900" in str(problem.render()))
        await pilot.press(*["backspace"] * 5, *"1.9", "enter")
        await until(pilot, lambda: isinstance(app.screen, NeuronScreen))
        assert (app.screen.layer_index, app.screen.neuron) == (1, 9)


async def test_queue_walks_the_unlabelled_neurons(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("d")
        await pilot.click("#unlabelled")
        await pilot.click("#start")
        await until(pilot, lambda: isinstance(app.screen, NeuronScreen))
        await until(pilot, lambda: app.screen.page is not None)
        assert (app.screen.layer_index, app.screen.neuron) == (1, 0)
        await pilot.press("n")
        await until(pilot, lambda: app.screen.neuron == 1 and app.screen.page is not None)
        assert app.screen.walk is not None and app.screen.walk.rank == 2


async def test_queue_of_low_scores(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded(pilot)
        low = min((r for r in screen.rows if r.score is not None), key=lambda r: r.score)
        await pilot.press("d")
        await pilot.click("#below")
        threshold = f"{low.score + 1e-6:.6f}"
        app.screen.query_one("#threshold").value = threshold
        await pilot.click("#start")
        await until(pilot, lambda: isinstance(app.screen, NeuronScreen))
        assert screen.query_state.below == float(threshold)
        assert (app.screen.layer_index, app.screen.neuron) == (low.layer, low.neuron)
        # The others scoring that low or lower are unscored (weaker still): the unlabelled.
        assert all(r.score is None or r == low for r in screen.rows)


async def test_help_lists_the_keys_active_on_the_list(tui):
    app = tui.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        text = await support.open_help(pilot)
        for phrase in ("Neuron list", "Go to L.N", "Table", "Cursor down", "Everywhere", "Quit"):
            assert phrase in text
        assert "Accept" not in text, "the neuron page's keys are not active here"
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, NeuronListScreen))


async def test_every_dialog_on_the_list_opens_framed_and_escape_closes_it(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await loaded(pilot)
        query = screen.query_state
        dialogs = {"g": GotoDialog, "d": QueueDialog, "M": ModelPicker, "question_mark": HelpScreen}
        for key, dialog in dialogs.items():
            await pilot.press(key)
            await until(pilot, lambda dialog=dialog: isinstance(app.screen, dialog))
            assert isinstance(app.screen, Dialog) and app.screen.query_one(".frame").region
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is screen)
        assert screen.query_state == query and not screen.busy, "closing chose nothing"

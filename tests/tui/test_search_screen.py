"""Search across neurons: type a text, see the neurons that fire most on it, open one."""

from __future__ import annotations

import threading

import pytest
import tui_support as support
from textual.widgets import Input
from tui_support import until

from labeller.model.search import search_neurons
from labeller.tui.backend import Backend
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.search_screen import HitTable, SearchScreen
from labeller.tui.token_view import TokenView

pytestmark = pytest.mark.anyio

TEXT = "def value(self): return the"


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


def found(table: HitTable) -> list[tuple[int, int]]:
    return [(h.layer, h.neuron) for h in table.hits]


async def test_typed_text_ranks_every_scanned_neuron_and_opens_one(tui, tiny_model, monkeypatch):
    loading = threading.Event()
    load = Backend.load_model

    def slow_load(self, name, step):
        loading.wait(10)
        return load(self, name, step)

    monkeypatch.setattr(Backend, "load_model", slow_load)
    app = tui.app()
    async with app.run_test(size=(100, 32)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
        await pilot.press("ctrl+f")  # before the model is ready: the search waits for it
        await until(pilot, lambda: isinstance(app.screen, SearchScreen))
        screen = app.screen
        screen.query_one("#search-text", Input).value = TEXT
        await pilot.pause(0.3)
        assert "model" in str(screen.query_one("#search-status").render())
        loading.set()
        await until(pilot, lambda: screen.result is not None and screen.result.text == TEXT)
        ids = tiny_model.encode(TEXT)
        expected = search_neurons(tiny_model, ids, [0, 1], top=50, per_token=10)
        overall = screen.query_one("#search-overall", HitTable)
        assert found(overall) == [(h.layer, h.neuron) for h in expected.overall]
        assert {h.layer for h in overall.hits} == {0, 1}  # both scanned layers
        status = str(screen.query_one("#search-status").render())
        assert f"{2 * tiny_model.d_mlp:,} neurons (layers 0–1)" in status

        # The token cursor picks the token whose neurons the second table ranks.
        view = screen.query_one(TokenView)
        view.focus()
        await pilot.press("home", "right")
        await pilot.pause(0.05)
        per_token = screen.query_one("#search-token", HitTable)
        assert found(per_token) == [(h.layer, h.neuron) for h in expected.per_token[1]]
        assert "#1 " in str(screen.query_one("#search-token-caption").render())

        # Enter on a found neuron opens its page; escape comes back to the search.
        overall.focus()
        await pilot.press("down")
        layer, neuron = found(overall)[1]
        cursor = str(screen.query_one("#search-cursor").render())
        assert f"L{layer} N{neuron}" in cursor
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
        assert (app.screen.layer_index, app.screen.neuron) == (layer, neuron)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen)


async def test_ranking_by_share_of_max_and_clearing(tui):
    app = tui.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
        await until(pilot, lambda: support.model_ready(app))
        await pilot.press("ctrl+f")
        await until(pilot, lambda: isinstance(app.screen, SearchScreen))
        screen = app.screen
        screen.query_one("#search-text", Input).value = TEXT
        await until(pilot, lambda: screen.result is not None)
        assert not screen.result.search.relative
        await pilot.press("ctrl+r")
        await until(pilot, lambda: screen.result.search.relative)
        shares = [h.relative for h in screen.query_one("#search-overall", HitTable).hits]
        assert shares == sorted(shares, reverse=True)
        assert "share of each neuron's scanned max" in str(
            screen.query_one("#search-status").render()
        )
        await pilot.press("ctrl+l")
        await until(pilot, lambda: screen.result is None)
        assert screen.query_one("#search-text", Input).value == ""
        assert not screen.query_one("#search-overall", HitTable).hits
        await pilot.press("tab")  # out of the text box, where ? is a character
        help_text = await support.open_help(pilot)
        assert "Search neurons" in help_text

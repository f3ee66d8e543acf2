"""Numbers where people look: the token under the cursor or mouse, ranks in the layer, output
logit weights, clearing the live text, the change under the perturbation cursor; and the list's
statistic sorts and filters."""

from __future__ import annotations

import pytest
import tui_support as support
from textual.widgets import Input, TextArea
from tui_support import until

from labeller.catalogue.browse import SortKey
from labeller.model.search import ranks_in_layer
from labeller.tui.example_item import PREFIX, ExampleItem
from labeller.tui.examples_pane import ExamplesPane
from labeller.tui.live_pane import LivePane
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.neuron_table import NeuronTable
from labeller.tui.perturb_pane import PerturbPane
from labeller.tui.token_view import TokenView

pytestmark = pytest.mark.anyio


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


async def open_neuron(pilot, layer: int = 0, neuron: int = 3) -> NeuronScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
    await pilot.press("g", *f"{layer}.{neuron}", "enter")
    await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
    return app.screen


def detail(screen: NeuronScreen) -> str:
    return str(screen.query_one("#example-detail").render())


async def test_example_tokens_give_their_value_and_the_rank_in_the_layer(tui, tiny_model):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        pane = screen.query_one(ExamplesPane)
        example = pane.highlighted()
        assert example is not None and example.rank == 0
        # The rank of the neuron in its layer at each top example's max token, from the model.
        await until(pilot, lambda: pane.ranks)
        view = screen.page.view
        with tui.catalogue() as catalogue:
            from labeller.catalogue.browse import top_example_windows

            windows = top_example_windows(catalogue, None, 0, 3)
        expected = ranks_in_layer(
            tiny_model, [w for _, w, _ in windows], [p for *_, p in windows], 0, 3
        )
        assert [pane.ranks[e.rank] for e in view.top_examples] == expected
        shown = detail(screen)
        assert (
            f"#{example.max_index} " in shown
            and f"{example.activations[example.max_index]:.4g}" in shown
        )
        assert "most active neuron of the layer" in shown or f"rank {expected[0]} of 48" in shown
        assert "top examples (median rank" in str(screen.query_one("#stats").render())
        # ←/→ move a token cursor through the highlighted example.
        await pilot.press("right")
        at = (
            example.max_index + 1
            if example.max_index + 1 < len(example.tokens)
            else example.max_index
        )
        assert f"#{at} " in detail(screen) and f"{example.activations[at]:.4g}" in detail(screen)
        # The mouse over a token says the same for that token.
        line = screen.query(ExampleItem).first()
        assert line.token_at(PREFIX - 1, 0) is None  # the rank, max and split column
        index = line.token_at(PREFIX + 3, 0)
        assert index is not None
        await pilot.hover(line, offset=(PREFIX + 3, 0))
        await until(pilot, lambda: f"#{index} " in detail(screen))
        assert f"{line.example.activations[index]:.4g}" in detail(screen)
        # Output tokens carry their logit weights.
        stats = str(screen.query_one("#stats").render())
        weight = view.weights.top_positive_tokens[0].weight
        assert f"{weight:+.2f}" in stats


async def test_live_text_clears_with_one_key(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await until(pilot, lambda: support.model_ready(app))
        await pilot.press("3")
        area = screen.query_one("#live-text", TextArea)
        area.load_text("def value(self): return")
        live = screen.query_one(LivePane)
        await until(pilot, lambda: live.trace and "".join(live.trace.tokens) == area.text)
        # The mouse over a token gives its exact value, as the cursor does.
        tokens = screen.query_one("#live-tokens", TokenView)
        await pilot.pause()
        await pilot.hover(tokens, offset=(1 + tokens._cells[1].x, 0))  # the second token
        cursor = screen.query_one("#live-cursor")
        await until(pilot, lambda: "#1 " in str(cursor.render()))
        assert f"{live.trace.activations[1]:.4g}" in str(cursor.render())
        await pilot.press("escape")  # on the tokens: the key works there too
        await pilot.press("ctrl+l")
        assert area.text == "" and app.focused is area
        await until(pilot, lambda: live.trace is not None and not live.trace.tokens)


async def test_perturbation_cursor_gives_each_experiments_change(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await until(pilot, lambda: support.model_ready(app))
        await pilot.press("p")
        perturb = screen.query_one(PerturbPane)
        await until(pilot, lambda: len(perturb.results) == 5, timeout=30)
        target = perturb._target()
        await pilot.press("left")
        note = str(screen.query_one("#perturb-cursor").render())
        index = target - 1
        delete = perturb.results["delete"]
        change = delete.deltas[delete.positions.index(index)]
        assert f"#{index} " in note and f"delete {change:+.3g}" in note
        assert "resample" in note and "start here" in note


async def test_list_sorts_by_statistics_and_filters_by_typed_ranges(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await until(pilot, lambda: isinstance(screen, NeuronListScreen) and screen.rows)
        for _ in range(7):  # layer, neuron, max, density, score, status, label -> cos
            await pilot.press("s")
        await until(pilot, lambda: screen.query_state.sort is SortKey.COSINE and not screen.busy)
        cosines = [r.cosine for r in screen.rows]
        assert cosines == sorted(cosines)  # most negative (erasing) first
        table = screen.query_one(NeuronTable)
        assert "cos" in [str(c.label) for c in table.columns.values()][4]
        await pilot.press("s")
        await until(pilot, lambda: screen.query_state.sort is SortKey.KURTOSIS and not screen.busy)
        kurtosis = [r.kurtosis for r in screen.rows]
        assert kurtosis[:10] == sorted(kurtosis[:10], reverse=True)
        await pilot.press("s")
        await until(pilot, lambda: screen.query_state.sort is SortKey.SKEW and not screen.busy)
        box = screen.query_one("#stats", Input)
        box.focus()
        await pilot.press(*"skew>1 cos<0")
        await until(pilot, lambda: screen.query_state.ranges and not screen.busy, timeout=5)
        assert screen.rows and all(r.skewness > 1 and r.cosine < 0 for r in screen.rows)
        box.value = "skew>"  # half typed: the box says it does not read, the list stays
        await pilot.pause(0.4)
        assert not box.is_valid and screen.query_state.ranges == ()

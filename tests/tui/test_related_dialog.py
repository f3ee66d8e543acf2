"""What a neuron does, on its page: DLA sections, the DLA strip key, related neurons."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tui_support as support
from builders import scan_params
from textual.widgets import OptionList
from tui_support import until

from labeller.model.dla import trace_dla
from labeller.model.loading import load_model
from labeller.model.related import related_on_windows
from labeller.records import ExampleKind, Split
from labeller.scan.runner import run_scan
from labeller.tui.example_item import ExampleItem
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.related_dialog import RelatedDialog

pytestmark = pytest.mark.anyio
PEOPLE_SEE = {Split.TRAIN, Split.CALIBRATION}


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


def rescan_with_dla_and_correlations(tui: support.Tui, corpus: Path) -> None:
    params = scan_params(Path(support.MODEL), corpus, tokens=300, dla=True, correlations="layer")
    with tui.catalogue() as catalogue:
        run_scan(catalogue, load_model(support.MODEL, device="cpu"), params, batch_size=4)


async def open_neuron(pilot, layer: int = 0, neuron: int = 3) -> NeuronScreen:
    from labeller.tui.neuron_list import NeuronListScreen

    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
    await pilot.press("g", *f"{layer}.{neuron}", "enter")
    await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
    return app.screen


async def test_dla_sections_and_scanned_related_neurons_jump(tui, tiny_corpus):
    rescan_with_dla_and_correlations(tui, tiny_corpus)
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        view = screen.page.view
        assert view.dla_top_examples and view.dla_bottom_examples and view.related_neurons
        kinds = [i.example.kind for i in screen.query(ExampleItem)]
        expected = [e for e in view.dla_top_examples if e.split in PEOPLE_SEE]
        assert kinds.count(ExampleKind.DLA_TOP) == len(expected)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, RelatedDialog))
        dialog = app.screen
        assert "scanned" in dialog.source
        assert dialog.related == view.related_neurons
        assert dialog.query_one(OptionList).option_count == len(view.related_neurons)
        await pilot.press("enter")
        first = view.related_neurons[0]
        await until(
            pilot,
            lambda: (
                isinstance(app.screen, NeuronScreen)
                and app.screen is not screen
                and app.screen.page is not None
            ),
        )
        assert (app.screen.layer_index, app.screen.neuron) == (first.layer, first.neuron)


async def test_unscanned_related_neurons_are_computed_on_the_random_windows(tui, tiny_model):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await until(pilot, lambda: support.model_ready(app))
        assert not screen.page.view.related_neurons
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, RelatedDialog))
        dialog = app.screen
        assert "not scanned" in dialog.source and "random windows" in dialog.source
        with tui.catalogue() as catalogue:
            from labeller.catalogue.browse import top_example_windows

            windows = top_example_windows(catalogue, None, 0, 3, ExampleKind.RANDOM)
        expected, _ = related_on_windows(tiny_model, [w for _, w, _ in windows], 0, 3)
        assert [(r.layer, r.neuron) for r in dialog.related] == [
            (r.layer, r.neuron) for r in expected
        ]
        assert [r.r for r in dialog.related] == pytest.approx([r.r for r in expected], abs=1e-6)


async def test_c_swaps_an_example_between_activation_and_dla_colouring(tui, tiny_model):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await until(pilot, lambda: support.model_ready(app))
        item = next(iter(screen.query(ExampleItem)))
        own = item.example
        with tui.catalogue() as catalogue:
            from labeller.catalogue.browse import example_token_ids

            ids = example_token_ids(catalogue, None, 0, 3, own.kind.value, own.rank)
        _, dla = trace_dla(tiny_model, ids, 0)
        expected = [0.0 if math.isnan(v) else v for v in dla[:, 3].tolist()]
        await pilot.press("c")
        await until(pilot, lambda: item.example is not own)
        assert item.example.activations == pytest.approx(expected, abs=1e-5)
        detail = str(screen.query_one("#example-detail").render())
        assert "DLA" in detail
        await pilot.press("c")
        await until(pilot, lambda: item.example is own)

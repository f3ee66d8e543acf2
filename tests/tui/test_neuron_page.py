"""The neuron page: examples, label candidates, live text, token edits, perturbations, tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tui_support as support
from builders import run_cli, scan_params, synthetic_documents
from fake_openai import FakeOpenAI, Reply, neuron_responder
from textual.coordinate import Coordinate
from textual.widgets import DataTable, TabbedContent, TextArea
from tui_support import notifications, until

from labeller.band_precision import detector_bands, label_bands
from labeller.catalogue import Catalogue, labels
from labeller.catalogue.browse import neuron_summaries
from labeller.demo.build import scan_and_label_offline
from labeller.detect.registry import resolve
from labeller.model.loading import load_model
from labeller.model.perturb import trace_neuron
from labeller.records import HistoryAction, NullControl, PredictionKind, Score, ScoreMethod, Split
from labeller.render import precision_spark
from labeller.tui.app import create_app
from labeller.tui.example_item import ExampleItem, SectionItem
from labeller.tui.examples_pane import ExamplesPane
from labeller.tui.experiment_view import TITLES, ExperimentView
from labeller.tui.labels_pane import LabelsPane
from labeller.tui.live_pane import LivePane
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.perturb_pane import PerturbPane
from labeller.tui.replace_token import ReplaceToken
from labeller.tui.score_windows import ScoreWindows
from labeller.tui.suggestions_screen import SuggestionsScreen
from labeller.tui.token_view import TokenView
from labeller.tui.unseal_dialog import UnsealDialog

pytestmark = pytest.mark.anyio
PEOPLE_SEE = {Split.TRAIN, Split.CALIBRATION}


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


async def open_neuron(pilot, layer: int = 0, neuron: int = 3) -> NeuronScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
    await pilot.press("g", *f"{layer}.{neuron}", "enter")
    await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
    return app.screen


async def model_ready(pilot) -> None:
    await until(pilot, lambda: support.model_ready(pilot.app))


async def test_examples_are_cut_around_the_max_and_expand(tui):
    app = tui.app()
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_neuron(pilot)
        view = screen.page.view
        items = list(screen.query(ExampleItem))
        shown = [
            e
            for e in (*view.top_examples, *view.random_examples, *view.quantile_examples)
            if e.split in PEOPLE_SEE
        ]
        assert view.quantile_examples
        assert [i.example for i in items] == shown
        banded = [i for i in items if i.example.band is not None]
        assert banded
        for item in banded:  # band rows are marked with their band
            assert item.render().plain.startswith(f"b{item.example.band} ")
        line = items[0]
        example = line.example
        assert example == view.top_examples[0]
        collapsed = line.render()
        marked = [span for span in collapsed.spans if "underline" in str(span.style)]
        assert [collapsed.plain[s.start : s.end] for s in marked] == [
            example.tokens[example.max_index].replace(" ", "·")
            if not example.tokens[example.max_index].strip(" ")
            else example.tokens[example.max_index].replace("\n", "⏎")
        ]
        await pilot.press("enter")
        expanded = line.render()
        assert len(expanded.plain.replace("\n", "")) >= len(collapsed.plain.replace("\n", ""))
        assert line.expanded
        stats = str(screen.query_one(ExamplesPane).query_one("#stats").render())
        assert "histogram" in stats and "output" in stats and "cos(w_in,w_out)" in stats


async def test_labels_tab_shows_scores_and_true_versus_simulated(tui):
    with tui.catalogue() as catalogue:
        labels.unseal(catalogue, catalogue.neuron_ref(None, 0, 3), annotator="alice")
    app = tui.app("alice")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await pilot.press("2")
        pane = screen.query_one(LabelsPane)
        table = pane.query_one(DataTable)
        assert table.row_count == len(screen.page.candidates) == 1
        explanation = screen.page.candidates[0]
        assert screen.selected == explanation
        windows = pane.query_one(ScoreWindows)
        rendered = windows.render().plain
        assert "true" in rendered and "sim" in rendered
        assert rendered.count("\ntrue ") == rendered.count("\nsim  ")


async def test_held_out_windows_are_sealed_until_you_unseal_them(tui):
    """Valid and test windows are in neither the Examples tab nor the scored-windows view until
    the annotator unseals the neuron (U, then y), which is recorded in its history as theirs."""
    app = tui.app("bob")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_neuron(pilot)
        view = screen.page.view
        assert screen.page.sealed
        shown = {item.example.split for item in screen.query(ExampleItem)}
        assert shown <= PEOPLE_SEE and shown
        pane_text = " ".join(
            str(item.render()) for item in screen.query_one(ExamplesPane).query(SectionItem)
        )
        assert "held-out windows (valid, test) sealed" in pane_text
        await pilot.press("2")
        windows = screen.query_one(ScoreWindows).render().plain
        assert "sealed" in windows and "true " not in windows and "sim " not in windows
        table = screen.query_one(LabelsPane).query_one(DataTable)
        assert table.get_row_at(0)[6].plain == "yes"  # the baseline saw train windows only
        await pilot.press("U")
        await until(pilot, lambda: isinstance(app.screen, UnsealDialog))
        await pilot.press("n")
        await until(pilot, lambda: app.screen is screen)
        with tui.catalogue() as catalogue:
            assert catalogue.unsealed_by(screen.page.ref.id) == []
        await pilot.press("U")
        await until(pilot, lambda: isinstance(app.screen, UnsealDialog))
        await pilot.press("y")
        await until(pilot, lambda: screen.page is not None and not screen.page.sealed)
        await until(
            pilot, lambda: {i.example.split for i in screen.query(ExampleItem)} > PEOPLE_SEE
        )
        assert len(list(screen.query(ExampleItem))) == len(view.top_examples) + len(
            view.random_examples
        ) + len(view.quantile_examples)
        assert "\ntrue " in screen.query_one(ScoreWindows).render().plain
        history = screen.page.history
        assert (history[-1].action, history[-1].annotator) == (HistoryAction.UNSEAL, "bob")


async def test_typing_text_traces_it_live(tui, tiny_model):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await model_ready(pilot)
        await pilot.press("3")
        area = screen.query_one("#live-text", TextArea)
        assert app.focused is area
        area.clear()
        await pilot.press(*"def value", "enter", *"x")
        text = "def value\nx"
        live = screen.query_one(LivePane)
        await until(
            pilot, lambda: live.trace is not None and live.trace.tokens and area.text == text
        )
        await until(pilot, lambda: "".join(live.trace.tokens) == text)
        ids = tiny_model.encode(text)
        assert live.trace.token_ids == ids
        assert live.trace.activations == pytest.approx(
            trace_neuron(tiny_model, ids, 0, 3), abs=1e-5
        )
        view = screen.query_one("#live-tokens", TokenView)
        assert view.tokens == tiny_model.token_strings(ids)
        assert "⏎" in view.render().plain


async def test_replacing_a_token_keeps_the_tokens_and_warns_when_it_splits(tui, tiny_model):
    app = tui.app()
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await open_neuron(pilot)
        await model_ready(pilot)
        await pilot.press("3")
        area = screen.query_one("#live-text", TextArea)
        area.load_text("def value(self): return")
        live = screen.query_one(LivePane)
        await until(pilot, lambda: live.trace and "".join(live.trace.tokens) == area.text)
        before = list(live.trace.token_ids)
        await pilot.press("escape")  # out of the text box, onto the tokens
        assert isinstance(app.focused, TokenView)
        await pilot.press("home", "right", "enter")
        await until(pilot, lambda: isinstance(app.screen, ReplaceToken))
        word = next(w for w in (" to", "x", "e") if len(tiny_model.encode(w)) == 1)
        app.screen.query_one("#replacement").value = word
        await until(pilot, lambda: "✓" in str(app.screen.query_one("#feedback").render()))
        await pilot.press("enter")
        single = tiny_model.encode(word)
        await until(pilot, lambda: live.trace.token_ids == [before[0], *single, *before[2:]])
        # A replacement that is two tokens: it goes in, and the user is told.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ReplaceToken))
        app.screen.query_one("#replacement").value = " selfish value"
        await pilot.press("enter")
        several = tiny_model.encode(" selfish value")
        await until(pilot, lambda: live.trace.token_ids[1 : 1 + len(several)] == several)
        assert any("no longer maps to a single token" in n for n in notifications(app))


async def test_every_perturbation_runs_on_a_selected_example(tui, tiny_model):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await model_ready(pilot)
        pane = screen.query_one(ExamplesPane)
        await pilot.press("down")  # the second top example
        example = pane.highlighted()
        assert example is not None and example.rank == 1
        await pilot.press("p")
        await until(pilot, lambda: screen.query_one(TabbedContent).active == "perturb")
        perturb = screen.query_one(PerturbPane)
        await until(
            pilot, lambda: perturb.trace is not None and perturb.trace.tokens == example.tokens
        )
        assert perturb._target() == example.max_index
        views = {v.kind: v for v in screen.query(ExperimentView)}
        assert set(views) == set(TITLES)
        await until(
            pilot,
            lambda: all(
                "base" in str(v.render()) or "full" in str(v.render()) for v in views.values()
            ),
            timeout=30,
        )
        # Choose another target: everything reruns around it.
        await pilot.press("home", "right", "right", "enter")
        await until(pilot, lambda: perturb.target == 2)
        await until(pilot, lambda: "#2 " in str(screen.query_one("#perturb-head").render()))
        await until(pilot, lambda: "full" in str(views["truncate"].render()), timeout=30)
        await pilot.press("m")
        assert perturb.target is None


async def test_help_lists_the_keys_active_where_it_was_asked(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await pilot.press("4")
        assert isinstance(app.focused, TokenView)
        text = await support.open_help(pilot)
        sections = ("Neuron page", "Perturb tab", "Tokens", "Everywhere")
        assert [line for line in text.splitlines() if line in sections] == list(sections)
        for phrase in ("Accept", "Needs review", "Choose token", "Target: max", "Live tab"):
            assert phrase in text
        assert "Go to L.N" not in text, "the list's keys are not active here"
        await pilot.press("escape")
        assert app.screen is screen


async def test_typing_while_perturbing_updates_the_perturbations(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await model_ready(pilot)
        await pilot.press("3")
        area = screen.query_one("#live-text", TextArea)
        area.load_text("return self.value")
        await pilot.press("escape", "4")
        perturb = screen.query_one(PerturbPane)
        await until(pilot, lambda: perturb.trace and "".join(perturb.trace.tokens) == area.text)
        await until(pilot, lambda: "base" in str(screen.query_one("#experiment-delete").render()))


async def test_suggest_tests_without_an_llm_says_what_to_configure(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await open_neuron(pilot)
        await model_ready(pilot)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, SuggestionsScreen))
        status = app.screen.query_one("#suggest-status")
        await until(pilot, lambda: "OPENAI_API_KEY" in str(status.render()))
        assert "--llm-config" in str(status.render())
        await pilot.press("escape")
        await pilot.press("l")  # LLM scoring says the same
        await until(pilot, lambda: any("OPENAI_BASE_URL" in n for n in notifications(app)))


SUGGESTIONS = '```json\n{"fire": ["def value(self):", "return self"], "quiet": ["the the"]}\n```'


async def test_suggest_tests_runs_the_llms_texts_through_the_model(tui, monkeypatch):
    with FakeOpenAI(lambda request: Reply(content=SUGGESTIONS)) as server:
        config = tui.workdir / "llm.toml"
        config.write_text(f'[llm]\nbase_url = "{server.base_url}"\nexplainer_model = "fake-llm"\n')
        monkeypatch.setenv("LABELLER_LLM_CONFIG", str(config))
        app = tui.app()
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_neuron(pilot)
            await model_ready(pilot)
            await pilot.press("t")
            await until(pilot, lambda: isinstance(app.screen, SuggestionsScreen))
            dialog = app.screen
            await until(pilot, lambda: len(dialog.verdicts) == 3)
            (request,) = server.requests
            assert request["model"] == "fake-llm"
            assert screen.selected.text in request["messages"][1]["content"]
            assert [v.suggestion.should_fire for v in dialog.verdicts] == [True, True, False]
            assert "fake-llm" in str(dialog.query_one("#suggest-status").render())
            await pilot.press("enter")  # try the first one live
            live = screen.query_one(LivePane)
            await until(
                pilot, lambda: live.trace and "".join(live.trace.tokens) == "def value(self):"
            )
            assert screen.query_one(TabbedContent).active == "live"


async def test_llm_scoring_uses_the_configured_simulator(tui, monkeypatch):
    with FakeOpenAI(neuron_responder) as server:
        config = tui.workdir / "llm.toml"
        config.write_text(f'[llm]\nbase_url = "{server.base_url}"\nsimulator_model = "fake-sim"\n')
        monkeypatch.setenv("LABELLER_LLM_CONFIG", str(config))
        app = tui.app()
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            screen = await open_neuron(pilot)
            await pilot.press("l")
            await until(pilot, lambda: any("with fake-sim" in n for n in notifications(app)))
        assert {r["model"] for r in server.requests} == {"fake-sim"}
    with tui.catalogue() as catalogue:
        explanations = catalogue.explanations_of(screen.page.ref.id)
    assert any(s.simulator == "fake-sim" for e in explanations for s in e.scores)


async def test_history_shows_who_changed_what(tui):
    app = tui.app("carol")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        await pilot.press("a")
        await until(pilot, lambda: screen.page and screen.page.version > 1)
        await pilot.press("h")
        await until(pilot, lambda: app.screen.query_one(DataTable).row_count >= 2)
        rows = [
            [str(c) for c in app.screen.query_one(DataTable).get_row_at(i)]
            for i in range(app.screen.query_one(DataTable).row_count)
        ]
        assert rows[0][1:3] == ["baseline", "propose"]
        assert rows[-1][1:3] == ["carol", "accept"]
        await pilot.press("escape")
        assert app.screen is screen


async def test_labels_tab_marks_scores_not_above_chance(tui):
    with tui.catalogue() as catalogue:
        view = catalogue.neuron_view(None, 0, 3)
        score = next(
            s
            for s in view.explanations[0].scores
            if s.split is Split.VALID and s.method is ScoreMethod.TOP_AND_RANDOM
        )
        assert score.score is not None and score.prediction is not None
        catalogue.save_null_control(
            NullControl(
                model=view.model,
                simulator=score.simulator or "",
                prompt_version=score.prompt_version or "",
                split=Split.VALID,
                prediction=score.prediction,
                values=[0.999],
                mean=0.999,
                std=0.0,
                p95=0.999,
            )
        )
    app = tui.app()
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await open_neuron(pilot)
        await pilot.press("2")
        pane = screen.query_one(LabelsPane)
        table = pane.query_one(DataTable)
        cell = table.get_row_at(0)[3]
        assert "≈chance" in cell.plain and "dim" in str(cell.style)
        assert "≈chance (null p95 1.00)" in str(pane.query_one("#label-detail").render())


async def test_the_score_beside_a_label_is_the_one_the_list_and_rank_use(tui):
    """A label scored by two LLM simulators and the baseline: its row, the page's heading and
    the scored-windows view show the scorer the list and `rank` use (here llm-a, which has the
    most expected-value scores), not the newest LLM's (llm-b's) nor the baseline's."""
    made = {"llm-a": (0.111, 0.222, 0.333), "llm-b": (0.777, 0.666, 0.555)}
    with tui.catalogue() as catalogue:
        three, four = (catalogue.neuron_view(None, 0, n).explanations[0] for n in (3, 4))
        for simulator, values in made.items():  # llm-b last: the newest scores
            catalogue.save_scores(three.id, llm_scores(simulator, values))
        catalogue.save_scores(four.id, llm_scores("llm-a", (0.5, 0.5, 0.5)))
        (ranked,) = [r for r in catalogue.rank(None) if (r.layer, r.neuron) == (0, 3)]
        listed = neuron_summaries(catalogue, None, [(0, 3)])[(0, 3)]
    assert ranked.score == listed.score == made["llm-a"][0]
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        assert f"score {made['llm-a'][0]:.3f}" in screen.heading.plain
        await pilot.press("2")
        pane = screen.query_one(LabelsPane)
        table = pane.query_one("#candidates", DataTable)
        row = table.get_row_at(0)
        assert [row[i].plain for i in (3, 4, 5)] == [f"{v:.3f}" for v in made["llm-a"]]
        assert str(table.ordered_columns[3].label) == "T&R·llm-a"  # the column names its scorer
        windows = pane.query_one(ScoreWindows).render().plain
        assert windows == "No scored windows by llm-a for this label yet."  # (none stored)


def llm_scores(simulator: str, values: tuple[float, float, float]) -> list[Score]:
    """An LLM simulator's expected-value scores of a label on valid: T&R, top, random."""
    methods = (ScoreMethod.TOP_AND_RANDOM, ScoreMethod.TOP_ONLY, ScoreMethod.RANDOM_ONLY)
    return [
        Score(
            method=method,
            split=Split.VALID,
            score=value,
            simulator=simulator,
            prompt_version="v1",
            prediction=PredictionKind.EXPECTED_VALUE,
            blind=True,
        )
        for method, value in zip(methods, values, strict=True)
    ]


@pytest.fixture()
def subset_catalogue(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A catalogue of a corpus with subsets `code` and `prose`, labelled and scored offline
    (as the demo is), in the working folder beside the model."""
    corpus = tmp_path / "sourced.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": t, "source": ("code", "prose")[i % 2]}) + "\n"
            for i, t in enumerate(synthetic_documents(30, seed=4))
        )
    )
    os.symlink(tiny_model_dir, tmp_path / support.MODEL)
    monkeypatch.chdir(tmp_path)
    params = scan_params(Path(support.MODEL), corpus, tokens=400, subset_field="source")
    with Catalogue.open("catalogue.db", create=True) as catalogue:
        model = load_model(support.MODEL, device="cpu")
        scan_and_label_offline(catalogue, model, params, batch_size=4, label_layers=[0])
    return Path("catalogue.db")


async def test_neuron_page_shows_subsets_illusion_and_band_precision(subset_catalogue):
    """A section per subset (its top windows, peaks and the label's score there), the illusion
    line, and the label's precision bar on each band heading it was scored on."""
    async with create_app(subset_catalogue, "alice").run_test(size=(120, 40)) as pilot:
        screen = await open_neuron(pilot)
        view = screen.page.view
        assert {e.subset for e in view.subset_examples} == {"code", "prose"}
        items = [i.example for i in screen.query(ExampleItem)]
        shown_subset = [e for e in view.subset_examples if e.split in PEOPLE_SEE]
        assert items[-len(shown_subset) :] == shown_subset
        sections = [str(s.render()) for s in screen.query(SectionItem)]
        assert any(s.startswith("Subset code · ") and "peaks: " in s for s in sections)
        assert any(s.startswith("Subset prose · ") for s in sections)
        assert any(s.startswith("Illusion ") and "(code vs prose)" in s for s in sections)
        bands = label_bands(view)
        bars = [s for s in sections if s.startswith("Band ") and " · label " in s]
        assert bands is not None and bands.bands  # the baseline label scored on bands
        assert len(bars) == len(bands.bands)


async def test_detectors_table_shows_each_detectors_precision_per_band(subset_catalogue):
    run_cli("detect", "--db", subset_catalogue, "--layer", 0, "--detector", "start-of-line")
    async with create_app(subset_catalogue, "alice").run_test(size=(120, 40)) as pilot:
        screen = await open_neuron(pilot)
        await pilot.press("2")
        view = screen.page.view
        assert [d.name for d in view.detectors] == ["start-of-line"]
        (detector,) = resolve(["start-of-line"], [])
        expected = detector_bands(view, detector)
        assert expected is not None
        table = screen.query_one(LabelsPane).query_one("#detectors", DataTable)
        cell = str(table.get_cell_at(Coordinate(0, 3)))
        assert cell == precision_spark([b.precision for b in expected.bands])
        assert len(cell) == len(expected.bands)

"""Labelling from the neuron page: accept, edit, write, reject, review, undo, and conflicts."""

from __future__ import annotations

import json

import pytest
import tui_support as support
from click.testing import CliRunner
from textual.widgets import DataTable
from tui_support import notifications, until

from labeller.catalogue.labels import set_status
from labeller.cli import cli
from labeller.records import LabelStatus
from labeller.tui.history_screen import HistoryScreen
from labeller.tui.label_editor import LabelEditor
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen

pytestmark = pytest.mark.anyio


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


async def open_neuron(pilot, neuron: int = 3) -> NeuronScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
    await pilot.press("g", *f"0.{neuron}", "enter")
    await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
    return app.screen


async def changed(pilot, screen: NeuronScreen, version: int) -> None:
    await until(pilot, lambda: screen.page.version > version and not _busy(screen))


def _busy(screen: NeuronScreen) -> bool:
    return any(w.group == "label" and w.is_running for w in screen.app.workers)


def labels(tui: support.Tui, neuron: int = 3) -> dict[str, tuple[str, str | None]]:
    with tui.catalogue() as catalogue:
        ref = catalogue.neuron_ref(None, 0, neuron)
        return {e.text: (e.status, e.annotator) for e in catalogue.explanations_of(ref.id)}


def history(tui: support.Tui, neuron: int = 3) -> list[tuple[str | None, str]]:
    with tui.catalogue() as catalogue:
        return [
            (h.annotator, h.action)
            for h in catalogue.history(catalogue.neuron_ref(None, 0, neuron))
        ]


async def test_accept_is_one_key_and_shows_in_labeller_show(tui):
    app = tui.app("alice")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        label = screen.selected.text
        seen = screen.page.version
        await pilot.press("a")
        await changed(pilot, screen, seen)
        assert labels(tui)[label][0] == "accepted"
        assert screen.selected.status == "accepted"
    runner = CliRunner()
    shown = runner.invoke(
        cli, ["show", "--db", "catalogue.db", "--layer", "0", "--neuron", "3", "--format", "json"]
    )
    assert shown.exit_code == 0, shown.output
    explanations = json.loads(shown.output)["explanations"]
    assert [(e["text"], e["status"]) for e in explanations] == [(label, "accepted")]
    logged = runner.invoke(
        cli, ["history", "--db", "catalogue.db", "--layer", "0", "--neuron", "3"]
    )
    assert "alice  accept" in logged.output


async def test_edit_saves_a_new_label_scored_by_the_baseline(tui):
    app = tui.app("bob")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await open_neuron(pilot)
        seen = screen.page.version
        original, original_id = screen.selected.text, screen.selected.id
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, LabelEditor))
        field = app.screen.query_one("Input")
        assert field.value == original
        field.value = original + ' and "x"'
        await pilot.click("#accept")
        await pilot.click("#save")
        await changed(pilot, screen, seen)
        edited = original + ' and "x"'
        assert labels(tui)[edited] == ("accepted", "bob")
        assert labels(tui)[original][0] == "proposed"
        await until(pilot, lambda: any("offline baseline" in n for n in notifications(app)))
        await until(pilot, lambda: screen.selected is not None and screen.selected.scores)
        assert screen.selected.text == edited
        assert {s.simulator for s in screen.selected.scores} == {"baseline"}
        # The history names the label the edit came from, here and in its screen.
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen))
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count > 1)
        actions = [str(table.get_row_at(i)[2]) for i in range(table.row_count)]
        assert f"write · edited from #{original_id}" in actions
    assert history(tui)[-2:] == [("bob", "write"), ("bob", "accept")]
    with tui.catalogue() as catalogue:
        write = catalogue.history(catalogue.neuron_ref(None, 0, 3))[-2]
    assert write.edited_from == original_id


async def test_write_a_new_label_that_the_baseline_cannot_score(tui):
    app = tui.app("bob")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await open_neuron(pilot)
        seen = screen.page.version
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, LabelEditor))
        assert app.screen.query_one("Input").value == ""
        await pilot.press(*"loops", "enter")
        await changed(pilot, screen, seen)
        assert labels(tui)["loops"] == ("proposed", "bob")
        await until(pilot, lambda: any("cannot score" in n for n in notifications(app)))


async def test_reject_needs_review_and_undo(tui):
    app = tui.app("alice")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_neuron(pilot)
        label = screen.selected.text
        seen = screen.page.version
        await pilot.press("x")
        await changed(pilot, screen, seen)
        assert labels(tui)[label][0] == "rejected"
        version = screen.page.version
        await pilot.press("v")
        await changed(pilot, screen, version)
        assert labels(tui)[label][0] == "needs_review"
        version = screen.page.version
        await pilot.press("u")
        await changed(pilot, screen, version)
        assert labels(tui)[label][0] == "rejected"
    assert history(tui) == [
        ("baseline", "propose"),
        ("alice", "reject"),
        ("alice", "needs_review"),
        ("alice", "undo"),
    ]


async def test_someone_elses_change_is_shown_before_anything_is_overwritten(tui):
    app = tui.app("alice")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await open_neuron(pilot)
        seen = screen.page.version
        label = screen.selected
        with tui.catalogue() as other:
            ref = other.neuron_ref(None, 0, 3)
            set_status(
                other, ref, label.id, LabelStatus.REJECTED, annotator="bob", expected_version=None
            )
        await pilot.press("a")
        await until(
            pilot, lambda: any("bob" in n and "changed since" in n for n in notifications(app))
        )
        # Refused: bob's rejection stands, and the page now shows it.
        assert labels(tui)[label.text][0] == "rejected"
        await until(pilot, lambda: screen.page.version > seen)
        assert screen.selected.status == "rejected"
        # Now that alice has seen it, her accept goes through.
        seen = screen.page.version
        await pilot.press("a")
        await changed(pilot, screen, seen)
        assert labels(tui)[label.text][0] == "accepted"
    assert history(tui)[-2:] == [("bob", "reject"), ("alice", "accept")]


async def test_nothing_to_undo_is_a_notification(tui):
    app = tui.app("zoe")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await open_neuron(pilot)
        await pilot.press("u")
        await until(pilot, lambda: any("nothing of zoe's to undo" in n for n in notifications(app)))
        assert isinstance(app.screen, NeuronScreen)

"""Two annotators on one catalogue: alice in the TUI, bob through his own TUI backend.

Undo reverts only alice's own latest change, and never over bob's later one; a save refused
because bob changed the neuron meanwhile keeps what alice typed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tui_support as support
from textual.widgets import Checkbox, DataTable, Input
from tui_support import MODEL, notifications, until

from labeller.records import LabelStatus
from labeller.tui.backend import Backend
from labeller.tui.label_editor import LabelEditor
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen

pytestmark = pytest.mark.anyio


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


def bob() -> Backend:
    """Bob's TUI backend on the same catalogue file: what his app calls when he presses a key."""
    return Backend(db_path=Path("catalogue.db"), annotator="bob")


async def open_neuron(pilot, neuron: int = 3) -> NeuronScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
    await pilot.press("g", *f"0.{neuron}", "enter")
    await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
    return app.screen


def _idle(screen: NeuronScreen) -> bool:
    return not any(w.group in ("label", "load") and w.is_running for w in screen.app.workers)


async def settled(pilot, screen: NeuronScreen, version: int) -> None:
    await until(pilot, lambda: screen.page.version > version and _idle(screen))


def statuses(tui: support.Tui, neuron: int = 3) -> dict[str, str]:
    with tui.catalogue() as catalogue:
        ref = catalogue.neuron_ref(None, 0, neuron)
        return {e.text: e.status.value for e in catalogue.explanations_of(ref.id)}


async def test_alices_undo_is_refused_after_bob_accepts_and_his_label_stays(tui):
    app = tui.app("alice")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await open_neuron(pilot)
        # Alice writes a label of her own (her latest change on this neuron).
        seen = screen.page.version
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, LabelEditor))
        await pilot.press(*"alice's idea", "enter")
        await settled(pilot, screen, seen)
        assert statuses(tui)["alice's idea"] == "proposed"
        # Bob, in his own TUI, accepts the baseline's label.
        theirs = bob()
        bobs_page = theirs.neuron(MODEL, 0, 3)
        bobs_label = next(e for e in bobs_page.candidates if e.source == "baseline")
        theirs.change_label(bobs_page, explanation_id=bobs_label.id, status=LabelStatus.ACCEPTED)
        # Alice's page is stale: her undo is refused, naming bob's change, and the page reloads.
        seen = screen.page.version
        await pilot.press("u")
        await until(pilot, lambda: any("bob accept" in n for n in notifications(app)))
        await settled(pilot, screen, seen)
        assert statuses(tui)[bobs_label.text] == "accepted"
        # Now that she has seen it, undo is still refused: bob changed the neuron after her.
        before = len(notifications(app))
        await pilot.press("u")
        await until(pilot, lambda: len(notifications(app)) > before)
        refusal = notifications(app)[-1]
        assert "not undone" in refusal and "bob accept" in refusal, refusal
        assert f'"{bobs_label.text}"' in refusal
        assert statuses(tui)[bobs_label.text] == "accepted"
        assert statuses(tui)["alice's idea"] == "proposed"
        assert isinstance(app.screen, NeuronScreen)
        # Bob's own undo works: his accept is his latest change and nobody changed it since.
        theirs.undo(theirs.neuron(MODEL, 0, 3))
        assert statuses(tui)[bobs_label.text] == "proposed"


async def test_alices_own_undo_reverts_her_accept(tui):
    app = tui.app("alice")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await open_neuron(pilot)
        label = screen.selected
        seen = screen.page.version
        await pilot.press("a")
        await settled(pilot, screen, seen)
        assert statuses(tui)[label.text] == "accepted"
        seen = screen.page.version
        await pilot.press("u")
        await settled(pilot, screen, seen)
        assert statuses(tui)[label.text] == "proposed"
        assert any(f"undid: #{label.id} back to proposed" in n for n in notifications(app))
        assert screen.page.view.label == label.id  # still the neuron's label, now proposed


async def test_a_save_refused_because_bob_changed_the_neuron_keeps_the_draft(tui):
    app = tui.app("alice")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await open_neuron(pilot)
        original = screen.selected
        opened = screen.page.version
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, LabelEditor))
        app.screen.query_one(Input).value = "alice's careful rewording"
        await pilot.click("#accept")
        # Meanwhile bob rejects the label alice is editing.
        theirs = bob()
        page = theirs.neuron(MODEL, 0, 3)
        theirs.change_label(page, explanation_id=original.id, status=LabelStatus.REJECTED)
        await pilot.click("#save")
        await until(pilot, lambda: any("bob reject" in n for n in notifications(app)))
        # Refused: the editor is back with what she typed and her accept box still ticked.
        await until(pilot, lambda: isinstance(app.screen, LabelEditor))
        editor = app.screen
        assert editor.query_one(Input).value == "alice's careful rewording"
        assert editor.query_one("#accept", Checkbox).value is True
        assert "alice's careful rewording" not in statuses(tui)
        assert statuses(tui)[original.text] == "rejected"
        # Saving again (she has now seen bob's change) goes through, still an edit of the label.
        await until(pilot, lambda: screen.page.version > opened and _idle(screen))
        seen = screen.page.version
        await pilot.click("#save")
        await settled(pilot, screen, seen)
        assert statuses(tui)["alice's careful rewording"] == "accepted"
    with tui.catalogue() as catalogue:
        write = catalogue.history(catalogue.neuron_ref(None, 0, 3))[-2]
    assert (write.annotator, write.action, write.edited_from) == ("alice", "write", original.id)


async def test_the_list_shows_the_status_of_the_label_beside_it(tui):
    """Bob writes a label that needs review; the list still shows the neuron's label (the
    baseline's, proposed) with its own status, and `!` for the label waiting for review."""
    theirs = bob()
    page = theirs.neuron(MODEL, 0, 3)
    shown = page.view.label
    theirs.change_label(page, text="bob's doubt", status=LabelStatus.NEEDS_REVIEW)
    app = tui.app("alice")
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
        table = app.screen.query_one(DataTable)
        status, label = (str(c) for c in table.get_row("0.3")[5:7])
    assert status == "proposed !"
    text = next(e.text for e in page.candidates if e.id == shown)
    assert text.startswith(label.removesuffix("…"))  # cut to the column

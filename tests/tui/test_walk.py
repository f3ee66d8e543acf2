"""Walking the work: a queue that follows the sorted, filtered list, "k of N", next and previous
from the neuron page keeping its tab and scroll, and back on the list where the walk got to."""

from __future__ import annotations

from pathlib import Path

import pytest
import tui_support as support
from textual.widgets import ListView, TabbedContent
from tui_support import choose_layer, notifications, until

from labeller.catalogue.browse import SortKey, Todo
from labeller.records import LabelStatus, Split
from labeller.tui.backend import Backend
from labeller.tui.example_item import ExampleItem, SectionItem
from labeller.tui.filter_bar import FilterBar
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.neuron_table import NeuronTable
from labeller.tui.queue_dialog import QueueDialog

pytestmark = pytest.mark.anyio


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


async def listed(pilot) -> NeuronListScreen:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
    screen = app.screen
    await until(pilot, lambda: not screen.busy)
    return screen


async def on_page(pilot, neuron: tuple[int, int]) -> NeuronScreen:
    app = pilot.app

    def there() -> bool:
        screen = app.screen
        return (
            isinstance(screen, NeuronScreen)
            and (screen.layer_index, screen.neuron) == neuron
            and screen.page is not None
        )

    await until(pilot, there)
    return app.screen


async def walked(pilot, neuron: tuple[int, int]) -> NeuronScreen:
    """On `neuron`'s page, with the next neuron looked up from it ("k of N · m left" counted
    for this neuron, not the estimate carried over from the last one)."""
    screen = await on_page(pilot, neuron)
    await until(pilot, lambda: screen.walk is not None and screen.walk.counted == neuron)
    return screen


def heading(screen: NeuronScreen) -> str:
    return str(screen.query_one("#neuron-title").render())


async def test_a_queue_walks_the_sorted_filtered_list_accepting_with_one_key(tui):
    app = tui.app("alice")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await listed(pilot)
        await choose_layer(pilot, screen.query_one(FilterBar), 0)
        await until(pilot, lambda: screen.query_state.layer == 0 and not screen.busy)
        await pilot.press("s", "s", "s", "s")  # score, best first
        await until(pilot, lambda: screen.query_state.sort is SortKey.SCORE and not screen.busy)
        order = [(r.layer, r.neuron) for r in screen.rows]
        assert len(order) == 48 and order != sorted(order)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, QueueDialog))
        await pilot.press("enter")  # the usual queue: no accepted label
        page = await walked(pilot, order[0])
        assert screen.query_state.todo is Todo.NOT_ACCEPTED
        assert "queue: no accepted label · 1 of 48 · 47 left" in heading(page)
        for k, neuron in enumerate(order[1:6], start=2):
            if k % 2:  # accept every other one, then next
                version = page.page.version
                await pilot.press("a")
                await until(pilot, lambda page=page, v=version: page.page.version > v)
            await pilot.press("n")
            page = await walked(pilot, neuron)
            assert f"{k} of 48 · {48 - k} left" in heading(page)
        with tui.catalogue() as catalogue:
            accepted = {
                (ref.layer, ref.neuron)
                for ref in catalogue.neuron_refs(None, [0], None)
                if any(e.status is LabelStatus.ACCEPTED for e in catalogue.explanations_of(ref.id))
            }
        assert accepted == {order[1], order[3]}
        # Back through the trail: an accepted neuron has left the queue but is one key away.
        await pilot.press("N", "N")
        page = await walked(pilot, order[3])
        assert "4 of 48" in heading(page)
        # The list comes back on the neuron the walk got to, showing the queue.
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen and not screen.busy)
        row = screen.rows[screen.query_one(NeuronTable).cursor_row]
        assert (row.layer, row.neuron) == order[4], "an accepted neuron leaves the queue"
        assert [(r.layer, r.neuron) for r in screen.rows] == [n for n in order if n not in accepted]
        assert "queue: no accepted label" in str(screen.query_one("#list-status").render())


async def test_next_and_previous_walk_the_list_from_the_opened_row(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await listed(pilot)
        await pilot.press("down", "down", "down", "enter")
        page = await walked(pilot, (0, 3))
        assert "list · 4 of 96 · 92 left" in heading(page)
        await pilot.press("n")
        page = await walked(pilot, (0, 4))
        await pilot.press("N")
        await pilot.press("N")  # before the trail: asked of the catalogue
        page = await walked(pilot, (0, 2))
        assert "3 of 96" in heading(page)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is screen and not screen.busy)
        assert screen.query_one(NeuronTable).cursor_row == 2


async def test_a_late_look_ahead_from_the_last_neuron_changes_nothing(tui):
    """The look-ahead of a neuron the walk has left (its worker finished after `n`) must not
    give the new page that neuron's count or its next neuron (the page itself): it is dropped."""
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await listed(pilot)
        await pilot.press("enter")
        page = await walked(pilot, (0, 0))
        old = page.walk.places[(0, 0)]
        await pilot.press("n")
        page = await walked(pilot, (0, 1))
        walk = page.walk
        before = (walk.left, list(walk.trail), walk.at, heading(page))
        late = NeuronScreen.WalkAhead(old, walk.places[(0, 1)], walk.left + 1)
        page.post_message(late)
        await pilot.pause()
        assert (walk.left, list(walk.trail), walk.at, heading(page)) == before
        await pilot.press("n")
        await walked(pilot, (0, 2))


async def test_a_page_read_ahead_shows_a_change_made_after_the_read(tui):
    """`n` shows the next page as the look-ahead read it, then reads it again: a label bob
    accepted in between is what the page ends up showing, and what its keys act on."""
    app = tui.app("alice")
    async with app.run_test(size=(100, 30)) as pilot:
        await listed(pilot)
        await pilot.press("enter")
        page = await walked(pilot, (0, 0))
        await until(pilot, lambda: page._ahead is not None)
        ahead = page._ahead
        assert (ahead.view.layer, ahead.view.neuron) == (0, 1)
        bob = Backend(db_path=Path("catalogue.db"), annotator="bob")
        bobs_page = bob.neuron(ahead.view.model, 0, 1)
        label = bobs_page.candidates[0]
        bob.change_label(bobs_page, explanation_id=label.id, status=LabelStatus.ACCEPTED)
        await pilot.press("n")
        page = await on_page(pilot, (0, 1))
        await until(pilot, lambda: page.page is not None and page.page.version > ahead.version)
        shown = next(e for e in page.page.candidates if e.id == label.id)
        assert shown.status is LabelStatus.ACCEPTED and page.page.view.label == label.id
        assert "accepted" in heading(page) and label.text[:20] in heading(page)


async def test_the_next_page_keeps_the_tab_and_the_example(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await listed(pilot)
        await pilot.press("enter")
        page = await walked(pilot, (0, 0))
        await pilot.press("down", "down", "down")
        examples = page.query_one("#example-list", ListView)
        assert examples.index == 4
        await pilot.press("n")
        page = await walked(pilot, (0, 1))
        examples = page.query_one("#example-list", ListView)
        assert examples.index == 4 and app.focused is examples
        await pilot.press("2")
        await pilot.press("n")
        page = await walked(pilot, (0, 2))
        assert page.query_one(TabbedContent).active == "labels"
        assert app.focused is page.query_one("#candidates")


async def test_a_turned_page_lists_exactly_the_new_neurons_examples(tui):
    """Pages turned in place reuse the rows they can; every turn must still list this neuron's
    shown examples and section headings, in order, whatever the last one had (bands vary)."""
    app = tui.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await listed(pilot)
        await pilot.press("enter")
        shapes = set()
        for neuron in range(6):
            page = await walked(pilot, (0, neuron))
            view = page.page.view
            shown = [
                e
                for e in (*view.top_examples, *view.random_examples, *view.quantile_examples)
                if e.split in (Split.TRAIN, Split.CALIBRATION)
            ]
            items = list(page.query_one("#example-list", ListView).children)
            examples = [i.example for i in items if isinstance(i, ExampleItem)]
            assert examples == shown
            headings = [str(i.render()) for i in items if isinstance(i, SectionItem)]
            bands = sorted({e.band for e in view.quantile_examples})
            assert [h.split(" ")[0] for h in headings[2 : 2 + len(bands)]] == ["Band"] * len(bands)
            shapes.add(len(items))
            await pilot.press("n")
        assert len(shapes) > 1  # the walk crossed neurons with differently shaped lists


async def test_the_end_of_a_queue_says_so(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = await listed(pilot)
        await pilot.press("r")  # layer order reversed: the last neuron first
        await until(pilot, lambda: screen.query_state.descending and not screen.busy)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, QueueDialog))
        await pilot.click("#unlabelled")
        await pilot.click("#start")
        page = await walked(pilot, (1, 47))
        assert "queue: unlabelled · 1 of 48" in heading(page)
        await pilot.press("N")
        await until(pilot, lambda: any("start of the queue" in n for n in notifications(app)))


async def test_a_page_opened_by_jumping_has_no_walk(tui):
    app = tui.app()
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await listed(pilot)
        await pilot.press("g", *"1.5", "enter")
        await on_page(pilot, (1, 5))
        await pilot.press("n")
        await until(pilot, lambda: any("start a queue (d)" in n for n in notifications(app)))

"""Labels and tokens are shown as text, never markup or terminal control; the core stays UI-free."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tui_support as support
from textual.widgets import TextArea
from tui_support import until

from labeller.catalogue import labels
from labeller.tui.live_pane import LivePane
from labeller.tui.neuron_list import NeuronListScreen
from labeller.tui.neuron_screen import NeuronScreen
from labeller.tui.text import plain, shown

pytestmark = pytest.mark.anyio

NASTY = "[/] [bold red]boom[/bold red] \x1b[2J\x1b]0;pwned\x07 \u202eevil"


@pytest.fixture()
def tui(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch) -> support.Tui:
    return support.environment(tmp_path_factory, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch)


def test_shown_text_has_no_control_characters():
    for text in (shown(NASTY), plain(NASTY).plain):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "[/]" in text and "\\x1b" in text and "\\u202e" in text
    assert shown("   ") == "···"
    assert shown("\n") == "⏎"


async def test_markup_and_escapes_in_labels_and_text_are_shown_literally(tui):
    with tui.catalogue() as catalogue:
        ref = catalogue.neuron_ref(None, 0, 0)
        labels.write_label(catalogue, ref, NASTY, annotator="mallory", expected_version=None)
    app = tui.app()
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, NeuronListScreen) and app.screen.rows)
        await until(pilot, lambda: support.model_ready(app))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NeuronScreen) and app.screen.page)
        screen = app.screen
        await pilot.press("3")
        screen.query_one("#live-text", TextArea).load_text("x[/] [b]y \x1b[2J")
        live = screen.query_one(LivePane)
        await until(pilot, lambda: live.trace is not None and "[/]" in "".join(live.trace.tokens))
        svg = app.export_screenshot()
        await pilot.press("escape", "2")
        labels_svg = app.export_screenshot()
    for picture in (svg, labels_svg):
        assert "\x1b" not in picture and "\x07" not in picture
    assert "[/]" in svg.replace("&#160;", " ")
    assert "boom" in labels_svg and "[bold&#160;red]" in labels_svg


def test_importing_the_catalogue_and_cli_does_not_import_textual():
    code = (
        "import sys, labeller.catalogue, labeller.catalogue.browse, labeller.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'torch')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

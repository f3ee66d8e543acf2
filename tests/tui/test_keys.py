"""The key audit: across every screen, dialog and pane of the TUI, a key means one thing.

Read from the classes' own BINDINGS, so a new binding that reuses a key for something else fails
here (today's case: `u` was the queue on the list and undo on the neuron page).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from textual.binding import Binding
from textual.dom import DOMNode

import labeller.tui

# Keys whose meaning is "leave this" everywhere: back from a page, close a dialog, leave a box.
LEAVING = {"escape": {"back", "close", "focus_table"}}
# A dialog may close on the key that opened it (h: history, ?: help), and a yes/no question
# on n ("keep sealed"): n never does anything there that cannot be done again.
TOGGLES = {
    "h": {"history", "close"},
    "question_mark": {"help", "close"},
    "n": {"walk(1)", "close"},
}
# One meaning under two action names: ←/→ move the token cursor (in the token view and in the
# examples' windows); ctrl+f is the search across neurons (on its own screen: back to its text).
SAME = {
    "left": {"move(-1)", "token(-1)"},
    "right": {"move(1)", "token(1)"},
    "ctrl+f": {"search", "focus_text"},
}


def our_bindings() -> list[tuple[str, str, Binding]]:
    """(class name, key, binding) for every binding declared in labeller.tui."""
    found: list[tuple[str, str, Binding]] = []
    for info in pkgutil.iter_modules(labeller.tui.__path__):
        module = importlib.import_module(f"labeller.tui.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, DOMNode) or cls.__module__ != module.__name__:
                continue
            for binding in cls.__dict__.get("BINDINGS", []):
                assert isinstance(binding, Binding), f"{name}: write bindings as Binding(...)"
                for key in binding.key.split(","):
                    found.append((name, key.strip(), binding))
    return found


def test_no_key_means_one_thing_on_one_screen_and_another_on_the_next():
    """A key's meaning is the action it runs (the same action in two places is one meaning:
    home is 'first' in the token view and in the examples)."""
    meanings: dict[str, dict[str, list[str]]] = {}
    for owner, key, binding in our_bindings():
        action = binding.action.removeprefix("app.")
        meanings.setdefault(key, {}).setdefault(action, []).append(owner)
    assert meanings["n"]["walk(1)"] == ["NeuronScreen"]
    clashes = {
        key: actions
        for key, actions in meanings.items()
        if len(actions) > 1
        and set(actions) - LEAVING.get(key, set()) - TOGGLES.get(key, set()) - SAME.get(key, set())
    }
    assert clashes == {}


def test_keys_terminals_intercept_have_plain_alternatives():
    """alt+digit types a character under tmux and macOS terminals; function keys open menus."""
    for owner, key, binding in our_bindings():
        if key.startswith("alt+") or (key.startswith("f") and key[1:].isdigit()):
            plain = [
                k.strip()
                for k in binding.key.split(",")
                if not k.strip().startswith("alt+") and not k.strip()[1:].isdigit()
            ]
            assert plain, f"{owner}: {key} ({binding.description}) has no plain alternative"

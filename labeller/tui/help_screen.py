"""The keys that work where help was asked for: that screen's active bindings, so it cannot drift.

What is active depends on the focus (the table's keys, a text box's, the token view's), so the
help lists exactly what the footer and the key dispatch see, grouped by the widget that binds it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import ActiveBinding, Binding, BindingType
from textual.containers import VerticalScroll
from textual.dom import DOMNode
from textual.widgets import Static

from labeller.tui.dialog import Dialog

MOUSE = (
    "Mouse: click a column header to sort by it (again to reverse); click a row to highlight "
    "it and again to open it; click a tab to switch, an example to show its whole window, a "
    "token to choose it. Scroll with the wheel."
)


class HelpScreen(Dialog[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "close", "Close", id="help.close")
    ]

    def __init__(self, active: Iterable[ActiveBinding]) -> None:
        """`active`: the bindings of the screen help was asked on, read before this covers it."""
        super().__init__()
        self.groups = _by_node(active)

    def compose_body(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._text())

    def _text(self) -> Text:
        out = Text("Keys", "bold")
        out.append("  (escape closes this)\n", "dim")
        for node, actions in self.groups:
            out.append(f"\n{_title(node)}\n", "bold underline")
            for bindings, enabled in actions.values():
                keys = ", ".join(dict.fromkeys(self.app.get_key_display(b) for b in bindings))
                out.append(f"  {keys:<18}", "bold cyan" if enabled else "dim")
                out.append(f"{bindings[0].description}\n", "" if enabled else "dim")
        out.append(f"\n{MOUSE}\n", "dim")
        return out


def _by_node(
    active: Iterable[ActiveBinding],
) -> list[tuple[DOMNode, dict[str, tuple[list[Binding], bool]]]]:
    """Described bindings by the node that binds them, each action once with all its keys: the
    screen's first, then those of the focused widget's containers and its own, the app's last."""
    groups: dict[DOMNode, dict[str, tuple[list[Binding], bool]]] = {}
    for node, binding, enabled, _tooltip in active:
        if binding.description and not binding.system:
            actions = groups.setdefault(node, {})
            actions.setdefault(binding.action, ([], enabled))[0].append(binding)
    return sorted(
        groups.items(), key=lambda group: (isinstance(group[0], App), len(group[0].ancestors))
    )


def _title(node: DOMNode) -> str:
    """The node's `BINDING_GROUP_TITLE`, else its class in words ("DataTable": "Data table")."""
    if node.BINDING_GROUP_TITLE:
        return node.BINDING_GROUP_TITLE
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", type(node).__name__).capitalize()

"""The neuron's related neurons (most correlated, then most anti-correlated) with their labels;
enter opens the chosen one's page. Says where the correlations come from (the scan, or computed
now on the stored random windows)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from labeller.records import RelatedNeuron
from labeller.tui.dialog import Dialog
from labeller.tui.text import shown


def related_line(related: RelatedNeuron) -> Text:
    line = Text(f"L{related.layer} N{related.neuron:<6}")
    line.append(f" r {related.r:+.3f}  ", "bold green" if related.r > 0 else "bold blue")
    if related.label:
        line.append(shown(related.label))
    else:
        line.append("(no label)", "dim")
    return line


class RelatedDialog(Dialog[tuple[int, int]]):
    def __init__(self, neuron: str, related: list[RelatedNeuron], source: str) -> None:
        super().__init__()
        self.neuron = neuron
        self.related = related
        self.source = source

    def compose_body(self) -> ComposeResult:
        yield Static(Text(f"Neurons related to {self.neuron}", "bold"))
        yield Static(Text(self.source + " · enter: open", "dim"))
        yield OptionList(*(Option(related_line(r), id=str(i)) for i, r in enumerate(self.related)))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        chosen = self.related[int(event.option.id or 0)]
        self.dismiss((chosen.layer, chosen.neuron))

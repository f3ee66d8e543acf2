"""The neuron page's evidence: statistics, histogram, output tokens and the example windows.

Every example is coloured on the same scale (the neuron's maximum), the max token is underlined,
and a long window is cut around its max; enter or a click shows the whole window. The line under
the list gives the exact activation of the token under the mouse or the token cursor (←/→), and
for a top example the neuron's rank among its layer's neurons at the example's max token.
Held-out windows (valid, test) are left out while sealed for the annotator (see
`labeller.sealing`). A scan with --dla adds the windows with the highest and lowest direct logit
attribution (coloured by DLA, on their own scale); `c` swaps the highlighted example's colouring
between activation and DLA (computed by the model).
"""

from __future__ import annotations

import itertools
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import ListView, Static

from labeller import band_precision, subsets
from labeller.records import (
    Example,
    ExampleKind,
    Illusion,
    NeuronView,
    SubsetSummary,
    window_overlap,
)
from labeller.render import precision_bar
from labeller.sealing import held_out_count, visible
from labeller.tui.example_item import ExampleItem, SectionItem
from labeller.tui.example_list import ExampleList
from labeller.tui.text import fmt, legend, shown, spark

DLA_KINDS = (ExampleKind.DLA_TOP, ExampleKind.DLA_BOTTOM)


def dla_scale(view: NeuronView) -> float:
    """One colour scale for both DLA sections: the largest |DLA| among them."""
    both = [*view.dla_top_examples, *view.dla_bottom_examples]
    return max((abs(e.max_activation) for e in both), default=0.0) or 1e-9


def dla_heading(view: NeuronView, top: bool, shown_count: int) -> Text:
    if top:
        heading = Text(f"Top {shown_count} by DLA (pushes the correct next token)")
        overlap = window_overlap(view.top_examples, view.dla_top_examples)
        if overlap is not None:
            heading.append(f" · Jaccard overlap with top windows {overlap:.2f}", "dim")
    else:
        heading = Text(f"Bottom {shown_count} by DLA (suppresses the correct next token)")
    heading.append(f" · colour ±{fmt(dla_scale(view))}", "dim")
    return heading


def band_heading(
    band: int | None, examples: list[Example], view: NeuronView, precision: float | None = None
) -> Text:
    """`Band 3 [1.50, 2.00) · 4 sampled · label ██████░░░░ 0.60`: a band's edges, the top one
    closed at the max, and the label's precision in the band when it was scored on bands."""
    low, high = examples[0].band_low or 0.0, examples[0].band_high or 0.0
    closing = "]" if high >= view.stats.max else ")"
    heading = Text(f"Band {band} [{fmt(low)}, {fmt(high)}{closing}")
    heading.append(f" · {len(examples)} sampled", "dim")
    if precision is not None:
        filled, empty = precision_bar(precision)
        heading.append(" · label ", "dim")
        heading.append(filled, "green")
        heading.append(empty, "dim")
        heading.append(f" {precision:.2f}")
    return heading


def subset_heading(summary: SubsetSummary) -> Text:
    """`Subset code · 10 top · max 2.55 · label r 0.42 · peaks: def ( self`."""
    heading = Text(f"Subset {shown(summary.subset)}")
    heading.append(f" · {summary.windows} top · max {fmt(summary.max_activation)}", "dim")
    if summary.score is not None:
        heading.append(f" · label r {summary.score:.2f}")
    heading.append(" · peaks: ", "dim")
    heading.append(" ".join(shown(t) for t in summary.peak_tokens))
    return heading


def illusion_line(found: Illusion) -> Text:
    """`Illusion 0.73 (code vs prose) · divergence 0.73 · score gap 0.10`."""
    line = Text(f"Illusion {found.measure:.2f} ", "bold" if found.measure >= 0.5 else "")
    line.append(f"({' vs '.join(shown(p) for p in found.pair)})")
    line.append(f" · divergence {found.example_divergence:.2f}", "dim")
    if found.score_gap is not None:
        line.append(f" · score gap {found.score_gap:.2f}", "dim")
    return line


class ExamplesPane(Vertical):
    """Statistics on top, then top, random and activation-band examples in one
    keyboard-navigable list."""

    BINDING_GROUP_TITLE = "Examples tab"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "token(-1)", "Previous token", id="examples.left", show=False),
        Binding("right", "token(1)", "Next token", id="examples.right", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        # Per top example (by rank): the neuron's rank in its layer at the example's max token.
        self.ranks: dict[int, int] = {}
        self.layer_width = 0
        self._view: NeuronView | None = None
        self._shown_top: set[int] = set()  # ranks of the top examples shown (not sealed)
        self._pointed: int | None = None
        self._swapped: dict[int, Example] = {}  # list index: the example as first shown there

    def compose(self) -> ComposeResult:
        yield Static(id="stats")
        yield ExampleList(id="example-list")
        yield Static(id="example-detail")

    def show(self, view: NeuronView, *, sealed: bool = True) -> None:
        """Show the neuron's examples. The next neuron's page (same sections, same counts)
        updates the rows in place: mounting some 170 widgets anew costs most of a page paint,
        and in place the highlighted example and the scroll position stay where they were."""
        previous = self._view
        if previous is not None and (previous.model, previous.layer, previous.neuron) != (
            view.model,
            view.layer,
            view.neuron,
        ):
            self.ranks = {}  # another neuron's: its own come with its `Ranks`
        self._view = view
        self._shown_top = {e.rank for e in visible(view.top_examples, sealed)}
        scale = max(view.stats.max, 1e-9)
        self.query_one("#stats", Static).update(self._stats(view, scale))
        self._rank_summary()
        top = visible(view.top_examples, sealed)
        random = visible(view.random_examples, sealed)
        rows: list[Text | Example] = [Text(f"Top {len(top)} examples"), *top]
        rows += [Text(f"Random {len(random)} examples"), *random]
        label_bands = band_precision.label_bands(view)
        precision = {b.band: b.precision for b in label_bands.bands} if label_bands else {}
        for band, group in itertools.groupby(view.quantile_examples, key=lambda e: e.band):
            members = list(group)
            heading = band_heading(
                band, members, view, precision.get(band) if band is not None else None
            )
            rows += [heading, *visible(members, sealed)]
        found = subsets.illusion(view)
        if found is not None:
            rows.append(illusion_line(found))
        for summary in subsets.subset_summaries(view):
            members = [e for e in view.subset_examples if e.subset == summary.subset]
            rows += [subset_heading(summary), *visible(members, sealed)]
        for top_side, members in ((True, view.dla_top_examples), (False, view.dla_bottom_examples)):
            if members:
                shown_members = visible(members, sealed)
                rows += [dla_heading(view, top_side, len(shown_members)), *shown_members]
        self._swapped = {}
        held_out = held_out_count(view)
        if sealed and held_out:
            note = f"{held_out} held-out windows (valid, test) sealed · U: unseal (recorded)"
            rows.append(Text(note, "dim"))
        examples = self.query_one("#example-list", ListView)
        present = list(examples.children)
        # Rows whose kind (example or heading) matches are updated in place: mounting some 40
        # widgets anew costs most of a page paint. Sealing and the number of bands vary between
        # neurons, so usually only the band sections at the end are mounted again.
        same = 0
        for item, row in zip(present, rows, strict=False):
            if isinstance(item, ExampleItem) != isinstance(row, Example):
                break
            same += 1
        for item, row in zip(present[:same], rows[:same], strict=True):
            if isinstance(item, ExampleItem) and isinstance(row, Example):
                item.show(row, self._scale(row))
            elif isinstance(item, SectionItem) and isinstance(row, Text):
                item.show(row)
        kept = examples.index
        if same < len(present):
            examples.remove_items(range(same, len(present)))
        if same < len(rows):
            examples.extend(
                ExampleItem(row, self._scale(row)) if isinstance(row, Example) else SectionItem(row)
                for row in rows[same:]
            )
        # The person's row stays highlighted if there is still an example there.
        if kept is not None and kept < len(rows) and isinstance(rows[kept], Example):
            examples.index = kept
        else:
            examples.index = 1 if top else None
        example = self.highlighted()
        if example is not None:  # the same row may hold another example: no Highlighted comes
            self._detail(example, None)

    def _scale(self, example: Example, swapped: bool = False) -> float:
        """The colour scale of a row: the DLA sections' for a DLA strip, else the neuron's max."""
        view = self._view
        assert view is not None
        by_dla = (example.kind in DLA_KINDS) != swapped
        return dla_scale(view) if by_dla else max(view.stats.max, 1e-9)

    def showing_swapped(self) -> bool:
        """Whether the highlighted row shows the other strip (DLA for an activation example)."""
        index = self.query_one("#example-list", ListView).index
        return index is not None and index in self._swapped

    def swap_strip(self, activations: list[float], dla: list[float]) -> None:
        """Colour the highlighted example by the other quantity (DLA for an activation example,
        activation for a DLA one); called again, back to its own. Tokens without a DLA (the
        last: its next token is outside the window) show 0."""
        examples = self.query_one("#example-list", ListView)
        item, index = examples.highlighted_child, examples.index
        if not isinstance(item, ExampleItem) or index is None:
            return
        if index in self._swapped:
            own = self._swapped.pop(index)
            item.show(own, self._scale(own))
            self._detail(own, self._pointed)
            return
        own = item.example
        by_dla = own.kind not in DLA_KINDS
        values = [0.0 if v != v else v for v in (dla if by_dla else activations)]
        at = max(range(len(values)), key=lambda i: abs(values[i])) if values else 0
        other = own.model_copy(
            update={
                "activations": values,
                "max_index": at,
                "max_activation": values[at] if values else 0.0,
            }
        )
        self._swapped[index] = own
        item.show(other, self._scale(other, swapped=True))
        self._detail(other, self._pointed)

    def _stats(self, view: NeuronView, scale: float) -> Text:
        s = view.stats
        out = Text(f"max {fmt(s.max)} min {fmt(s.min)} mean {fmt(s.mean, 4)} std {fmt(s.std, 4)}")
        out.append(f" density {s.density:.1%}")
        if view.weights is not None:
            out.append(f" cos(w_in,w_out) {view.weights.w_in_w_out_cosine:+.2f}")
        out.append("\nhistogram (log) ", "dim")
        out.append(f"{s.histogram.low:.3g} ")
        out.append(spark([float(c) for c in s.histogram.counts], 48, log=True), "cyan")
        out.append(f" {s.histogram.high:.3g}")
        if view.weights is not None:
            for sign, tokens in (
                ("+", view.weights.top_positive_tokens),
                ("−", view.weights.top_negative_tokens),
            ):
                out.append(f"\n{sign} output ", "dim")
                for token in tokens[:8]:  # with its logit weight, w_out · W_U
                    out.append(f"'{shown(token.token)}'")
                    out.append(f"{token.weight:+.2f} ", "dim")
        out.append("\n")
        out.append_text(legend(scale))
        out.append("  underlined: max · enter: window · p: perturb · c: DLA · o: related", "dim")
        return out

    def highlighted(self) -> Example | None:
        item = self.query_one("#example-list", ListView).highlighted_child
        return item.example if isinstance(item, ExampleItem) else None

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        if isinstance(event.item, ExampleItem):
            event.item.toggle()

    def set_ranks(self, ranks: dict[int, int], layer_width: int) -> None:
        """The neuron's rank in its layer at each top example's max token (computed by the
        model once the page is open)."""
        self.ranks, self.layer_width = ranks, layer_width
        self._rank_summary()
        example = self.highlighted()
        if example is not None:
            self._detail(example, self._pointed)

    def _rank_summary(self) -> None:
        """The statistics, with how often the neuron leads its layer at its top examples."""
        view = self._view
        ranks = {k: r for k, r in self.ranks.items() if k in self._shown_top}
        if view is None or not ranks:
            return
        stats = self._stats(view, max(view.stats.max, 1e-9))
        first = sum(1 for r in ranks.values() if r == 1)
        median = sorted(ranks.values())[len(ranks) // 2]
        stats.append(
            f"\nthe layer's most active neuron at the max token of {first} of "
            f"{len(ranks)} top examples (median rank {median})",
            "dim",
        )
        self.query_one("#stats", Static).update(stats)

    def on_list_view_highlighted(self, event: ListView.Highlighted) -> None:
        for item in self.query(ExampleItem):
            item.hide_cursor()
        if isinstance(event.item, ExampleItem):
            self._detail(event.item.example, None)

    def action_token(self, step: int) -> None:
        item = self.query_one("#example-list", ListView).highlighted_child
        if isinstance(item, ExampleItem):
            item.move_cursor(step)

    def on_example_item_pointed(self, event: ExampleItem.Pointed) -> None:
        event.stop()
        self._detail(event.item.example, event.index)

    def _detail(self, example: Example, index: int | None) -> None:
        """One line: the pointed token's activation (else the max token's), and for a top
        example the neuron's rank in its layer at its max token."""
        self._pointed = index
        at = example.max_index if index is None else index
        out = Text(f"{example.kind.value} {example.rank} · ", "dim")
        if 0 <= at < len(example.tokens):
            out.append(f"#{at} ")
            out.append(f"'{shown(example.tokens[at])}'", "bold")
            by_dla = (example.kind in DLA_KINDS) != self.showing_swapped()
            what = " DLA" if by_dla else ""
            out.append(f"{what} {example.activations[at]:.4g}")
            out.append(" (the max)" if at == example.max_index else "", "dim")
        rank = self.ranks.get(example.rank) if example.kind is ExampleKind.TOP else None
        if rank is not None:
            out.append(" · at its max token ", "dim")
            if rank == 1:
                out.append("the most active neuron of the layer", "bold green")
            else:
                out.append(f"rank {rank} of {self.layer_width:,} in the layer", "bold")
        out.append("  ←/→ or the mouse: another token", "dim")
        self.query_one("#example-detail", Static).update(out)

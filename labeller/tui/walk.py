"""A person's way through the neuron list, or a queue of it: "k of N", next and previous.

A walk follows the list as it was sorted and filtered when the walk began. It holds only the
neurons visited so far; stepping past the newest asks the catalogue for the one neuron after it
in the list's own order (`Backend.step`), so a walk through 300,000 neurons never loads them all,
and a neuron that leaves the list meanwhile (accepted, in a queue of neurons without an accepted
label) does not shift the rest. Going back revisits the trail first, so the neuron a person just
accepted is one key away even though it has left the queue.

No Textual here: the list starts walks, the neuron page steps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labeller.catalogue.browse import ListPlace, ListSpec, Todo

Neuron = tuple[int, int]


def describe_todo(todo: Todo | None, below: float | None) -> str:
    """What a queue walks, in words ("no accepted label", "best score below 0.3")."""
    if todo is None:
        return "the list"
    if below is not None and todo.value == "best score below":
        return f"{todo.value} {below:g}"
    return todo.value


@dataclass
class Walk:
    model: str
    spec: ListSpec
    total: int  # the list's length when the walk began: the N of "k of N"
    trail: list[Neuron]  # visited neurons in the list's order
    first_rank: int  # where trail[0] stood in the list (1-based) when the walk began
    at: int = 0  # index of the current neuron in the trail
    left: int | None = None  # neurons after the current one still in the list (None: unknown)
    places: dict[Neuron, ListPlace] = field(default_factory=dict)  # sort keys, once known
    # The neuron whose look-ahead counted `left` (after a move, `left` is an estimate until
    # the new neuron's own count arrives).
    counted: Neuron | None = None

    @classmethod
    def start(cls, model: str, spec: ListSpec, total: int, neuron: Neuron, rank: int) -> Walk:
        return cls(model, spec, total, [neuron], rank)

    @property
    def current(self) -> Neuron:
        return self.trail[self.at]

    @property
    def rank(self) -> int:
        """k in "k of N"."""
        return self.first_rank + self.at

    def known(self, step: int) -> Neuron | None:
        """The neighbour `step` (+1 or -1) away if the trail already holds it."""
        index = self.at + step
        return self.trail[index] if 0 <= index < len(self.trail) else None

    def move(self, step: int) -> Neuron:
        """Step to a neighbour the trail holds."""
        neuron = self.known(step)
        if neuron is None:
            raise IndexError("step past the trail: extend it first")
        self.at += step
        self.left = None if step < 0 else self.left
        if step > 0 and self.left is not None:
            self.left = max(self.left - 1, 0)
        return neuron

    def extend(self, step: int, place: ListPlace) -> None:
        """Add the neighbour the catalogue found beyond the trail's end (or its start)."""
        neuron = (place.layer, place.neuron)
        self.places[neuron] = place
        if step > 0:
            self.trail.append(neuron)
        else:
            self.trail.insert(0, neuron)
            self.first_rank -= 1
            self.at += 1

    def describe(self) -> str:
        """'queue: no accepted label · 3 of 50 · 47 left', or 'list: 3 of 96' for the list."""
        todo = self.spec.todo
        kind = f"queue: {describe_todo(todo, self.spec.below)}" if todo is not None else "list"
        text = f"{kind} · {self.rank:,} of {self.total:,}"
        if self.left is not None:
            text += f" · {self.left:,} left" if self.left else " · last one"
        return text

"""People's label workflow: write a label, set its status, review it, undo a change, unseal.

One function per action. Each runs inside `_changing`, the one place that takes the write lock,
refuses a stale view (`StaleLabel`) and appends what the action did to the neuron's history; each
returns the history entries it appended. Explainers' labels come in through
`Catalogue.add_explanation`, which writes its history entry with the same `append_history`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING

from labeller.catalogue import rows
from labeller.errors import UserError
from labeller.records import (
    STATUS_ACTIONS,
    Explanation,
    HistoryAction,
    HistoryEntry,
    LabelState,
    LabelStatus,
    neuron_name,
    utc_now,
)
from labeller.sealing import person_sees

if TYPE_CHECKING:  # the catalogue imports this module: the types only, to avoid a cycle
    from labeller.catalogue import Catalogue, NeuronRef

HUMAN = "human"  # the source of every label a person writes


class Review(StrEnum):
    """A person's verdict on an accepted label, recorded as the history action of that name."""

    CONFIRM = HistoryAction.CONFIRM.value  # agree: the label stays accepted
    DISPUTE = HistoryAction.DISPUTE.value  # disagree: the label goes to needs_review


class StaleLabel(UserError):
    """The neuron's labels changed since the caller read them: show the newer change first."""

    def __init__(self, ref: NeuronRef, newest: HistoryEntry) -> None:
        state = newest.after or newest.before
        shown = f'"{state.text}" ({state.status.value})' if state else "its held-out windows"
        super().__init__(
            f"neuron {neuron_name(ref.layer, ref.neuron)} changed since you read it: "
            f"{newest.annotator} "
            f"{newest.action.value} {shown} at {newest.at}; review it and try again"
        )
        self.newest = newest


def write_label(
    catalogue: Catalogue,
    ref: NeuronRef,
    text: str,
    *,
    annotator: str,
    expected_version: int | None,
    status: LabelStatus = LabelStatus.PROPOSED,
    edited_from: int | None = None,
) -> list[HistoryEntry]:
    """A person's label for the neuron, given `status`; the same text written again by anyone
    is the same label (its status set again, not a second copy).

    `edited_from`: the label this text was edited from (one of the neuron's). The edit's first
    entry on the written label records it (its write; or, when the text already was a label of
    the neuron's, the status it set, if any), so `history` says "edited from #12".
    """
    with _changing(catalogue, ref, annotator, expected_version) as change:
        if not text.strip():
            raise UserError("a new label needs some text")
        if edited_from is not None:
            change.check_owned(edited_from)
        explanation_id = change.write(text.strip(), edited_from)
        change.set_status(explanation_id, status)
    return change.entries()


def set_status(
    catalogue: Catalogue,
    ref: NeuronRef,
    explanation_id: int,
    status: LabelStatus,
    *,
    annotator: str,
    expected_version: int | None,
) -> list[HistoryEntry]:
    """Accept, reject, reopen, withdraw or flag one of the neuron's labels.

    Accepting a label demotes the neuron's previously accepted label to proposed, so a neuron has
    at most one accepted label. A label that already has `status` records nothing.
    """
    with _changing(catalogue, ref, annotator, expected_version) as change:
        change.check_owned(explanation_id)
        change.set_status(explanation_id, status)
    return change.entries()


def review(
    catalogue: Catalogue,
    ref: NeuronRef,
    explanation_id: int,
    verdict: Review,
    *,
    annotator: str,
    expected_version: int | None,
) -> list[HistoryEntry]:
    """Confirm or dispute an accepted label: a second person's check, kept in its history."""
    with _changing(catalogue, ref, annotator, expected_version) as change:
        change.check_owned(explanation_id)
        before = change.state(explanation_id)
        if before.status is not LabelStatus.ACCEPTED:
            raise UserError(
                f"only an accepted label can be confirmed or disputed; #{explanation_id} "
                f"is {before.status.value}"
            )
        if verdict is Review.DISPUTE:
            change.move(explanation_id, LabelStatus.NEEDS_REVIEW, HistoryAction.DISPUTE)
        else:
            change.record(HistoryAction.CONFIRM, before, change.state(explanation_id))
    return change.entries()


def undo(
    catalogue: Catalogue, ref: NeuronRef, *, annotator: str, expected_version: int | None
) -> list[HistoryEntry]:
    """Revert this annotator's latest change to the neuron not yet undone (each reverted entry
    recorded as an undo that names it), only while nobody else has changed the neuron since.

    A change is one entry, or an accept with the demotions it caused. When anyone else (another
    person, an explainer, an import) has changed the neuron after it, nothing is undone and the
    error names that later change: undo never reverts over someone else's decision, so it can
    never withdraw or demote a label another annotator accepted.
    """
    with _changing(catalogue, ref, annotator, expected_version) as change:
        history = catalogue.history(ref)
        undone = {
            rows.undone_id(row)
            for row in catalogue.db.query(
                "select after from label_history where neuron_id = ? and action = ?",
                [ref.id, HistoryAction.UNDO.value],
            )
        }
        mine = [
            i
            for i, e in enumerate(history)
            if e.annotator == annotator
            and e.action not in (HistoryAction.UNDO, HistoryAction.UNSEAL)
            and e.id not in undone
        ]
        name = neuron_name(ref.layer, ref.neuron)
        if not mine:
            raise UserError(f"nothing of {annotator}'s to undo on {name}")
        group = _one_change(history, mine[-1])
        target = history[mine[-1]]
        later = [e for e in history[group[0] :] if e.annotator != annotator]
        if later:
            raise UserError(
                f"not undone: {_describe(later[-1], 'someone')} after your latest change on "
                f"{name} ({_describe(target, annotator)}); undo reverts only your own change "
                "while nobody else has changed the neuron since"
            )
        for i in reversed(group):
            entry = history[i]
            assert entry.after is not None  # every change a person makes leaves a label state
            if change.state(entry.after.explanation_id).status is not entry.after.status:
                raise UserError(
                    f"not undone: label #{entry.after.explanation_id} on {name} is no longer "
                    f"{entry.after.status.value}; look at `labeller history` first"
                )
            restore = entry.before.status if entry.before else LabelStatus.WITHDRAWN
            change.move(entry.after.explanation_id, restore, HistoryAction.UNDO, undoes=entry.id)
    return change.entries()


def _one_change(history: list[HistoryEntry], last: int) -> list[int]:
    """Positions in `history` of the change that ends at `last`: an accept and the demotions it
    made just before it (same annotator, same time), else the entry alone."""
    target = history[last]
    group = [last]
    if target.action is HistoryAction.ACCEPT:
        i = last - 1
        while i >= 0 and (
            history[i].action is HistoryAction.DEMOTE
            and history[i].annotator == target.annotator
            and history[i].at == target.at
        ):
            group.insert(0, i)
            i -= 1
    return group


def _describe(entry: HistoryEntry, nobody: str) -> str:
    """`bob accept "def keyword" (accepted) at 2026-11-30T10:00:00+00:00`: who, what, when."""
    state = entry.after or entry.before
    shown = f' "{state.text}" ({state.status.value})' if state else ""
    return f"{entry.annotator or nobody} {entry.action.value}{shown} at {entry.at}"


def unseal(catalogue: Catalogue, ref: NeuronRef, *, annotator: str) -> list[HistoryEntry]:
    """Open the neuron's held-out (valid, test) windows to `annotator`, recorded in its history.

    From then on that person sees every window of the neuron, and the labels they write on it
    are not blind on valid and test (see `labeller.sealing`). Labels written before keep their
    blind scores. It cannot be undone (what was read stays read); unsealing again records
    nothing and returns no entries.
    """
    with _changing(catalogue, ref, annotator, None) as change:
        if annotator in catalogue.unsealed_by(ref.id):
            return []
        change.record(HistoryAction.UNSEAL, None, None)
    return change.entries()


def append_history(
    catalogue: Catalogue,
    neuron_id: int,
    explanation_id: int | None,
    action: HistoryAction,
    before: LabelState | None,
    after: LabelState | None,
    *,
    annotator: str | None,
    at: str,
    undoes: int | None = None,
    edited_from: int | None = None,
) -> int:
    """Append one entry to the neuron's history (append-only by trigger); returns its id."""
    row = rows.history_to_row(
        neuron_id,
        explanation_id,
        action,
        before,
        after,
        annotator=annotator,
        at=at,
        undoes=undoes,
        edited_from=edited_from,
    )
    return catalogue.insert("label_history", row)


@contextmanager
def _changing(
    catalogue: Catalogue, ref: NeuronRef, annotator: str, expected_version: int | None
) -> Iterator[_Change]:
    """The write lock, then the freshness check, before anything the change reads."""
    at = utc_now()
    with catalogue.write_transaction():
        if expected_version is not None and catalogue.label_version(ref.id) != expected_version:
            history = catalogue.history(ref)
            if not history:
                raise UserError(
                    f"neuron {neuron_name(ref.layer, ref.neuron)} has no label history yet "
                    f"(version 0), not version {expected_version}; check --expect-version"
                )
            raise StaleLabel(ref, history[-1])
        yield _Change(catalogue, ref, annotator, at)


class _Change:
    """One action's steps on the neuron's labels, each recorded in its history."""

    def __init__(self, catalogue: Catalogue, ref: NeuronRef, annotator: str, at: str) -> None:
        self.catalogue = catalogue
        self.ref = ref
        self.annotator = annotator
        self.at = at
        self.appended: list[int] = []
        # Label id -> the label it was edited from: recorded on that label's next entry.
        self.edited_from: dict[int, int] = {}

    def state(self, explanation_id: int) -> LabelState:
        return rows.label_state_from_row(
            self.catalogue.db.table("explanations").get(explanation_id)
        )

    def check_owned(self, explanation_id: int) -> None:
        row = self.catalogue.db.execute(
            "select neuron_id from explanations where id = ?", [explanation_id]
        ).fetchone()
        if row is None or row[0] != self.ref.id:
            neuron = neuron_name(self.ref.layer, self.ref.neuron)
            raise UserError(f"explanation {explanation_id} is not a label of neuron {neuron}")

    def write(self, text: str, edited_from: int | None = None) -> int:
        """The neuron's human label with this text: the existing one, or a new proposed one."""
        existing = self.catalogue.db.execute(
            "select id from explanations where neuron_id = ? and source = ? and text = ?",
            [self.ref.id, HUMAN, text],
        ).fetchone()
        if existing:
            if edited_from is not None and edited_from != existing[0]:
                self.edited_from[int(existing[0])] = edited_from
            return int(existing[0])
        unsealed = self.annotator in self.catalogue.unsealed_by(self.ref.id)
        explanation = Explanation(
            text=text,
            source=HUMAN,
            status=LabelStatus.PROPOSED,
            annotator=self.annotator,
            seen=person_sees(unsealed),
            created_at=self.at,
        )
        explanation_id = self.catalogue.insert(
            "explanations",
            rows.explanation_to_row(explanation, self.ref.id, self.ref.scan_id, self.at),
        )
        if edited_from is not None:
            self.edited_from[explanation_id] = edited_from
        self.record(HistoryAction.WRITE, None, self.state(explanation_id))
        return explanation_id

    def set_status(self, explanation_id: int, status: LabelStatus) -> None:
        if status is LabelStatus.ACCEPTED:
            for (other,) in self.catalogue.db.execute(
                "select id from explanations where neuron_id = ? and status = ? and id != ?",
                [self.ref.id, LabelStatus.ACCEPTED.value, explanation_id],
            ).fetchall():
                self.move(other, LabelStatus.PROPOSED, HistoryAction.DEMOTE)
        if self.state(explanation_id).status is not status:
            self.move(explanation_id, status, STATUS_ACTIONS[status])

    def move(
        self,
        explanation_id: int,
        status: LabelStatus,
        action: HistoryAction,
        *,
        undoes: int | None = None,
    ) -> None:
        """Give the label `status`, recorded as `action`."""
        before = self.state(explanation_id)
        self.catalogue.db.table("explanations").update(
            explanation_id, {"status": status.value, "updated_at": self.at}
        )
        self.record(action, before, self.state(explanation_id), undoes=undoes)

    def record(
        self,
        action: HistoryAction,
        before: LabelState | None,
        after: LabelState | None,
        *,
        undoes: int | None = None,
    ) -> None:
        state = after or before
        self.appended.append(
            append_history(
                self.catalogue,
                self.ref.id,
                state.explanation_id if state else None,
                action,
                before,
                after,
                annotator=self.annotator,
                at=self.at,
                undoes=undoes,
                edited_from=self.edited_from.pop(state.explanation_id, None) if state else None,
            )
        )

    def entries(self) -> list[HistoryEntry]:
        """The entries this change appended, as `history` reads them back."""
        return [e for e in self.catalogue.history(self.ref) if e.id in self.appended]

"""Who sees which windows, and so which scores are blind: the rules, in one place.

A neuron's windows are split at scan time (train, calibration, valid, test). Who is shown what:

- an explainer (LLM or the offline baseline) is given the train windows only;
- a person, in the TUI and in `labeller show`'s text, sees train and calibration windows; the
  held-out splits (valid, test) are sealed until that person unseals the neuron (one explicit,
  recorded action: `labeller unseal`, or `U` in the TUI), after which they see all four.

A label records the splits its author had been shown when it was written (`Explanation.seen`),
and a score is blind when its split is not among them (`Score.blind`). So an explainer's scores
on calibration, valid and test are blind; a person's score on calibration is not; a person's
score on valid or test is blind unless they had unsealed the neuron before writing the label
(an edit is a new label, so it is judged when it is written). A label whose `seen` is unknown
(imported from an export that did not record it) gets no blind scores.

Pure functions over records: no SQL, no Textual.
"""

from __future__ import annotations

from collections.abc import Iterable

from labeller.records import Example, NeuronView, Split

HELD_OUT = frozenset({Split.VALID, Split.TEST})
EXPLAINER_SEES: tuple[Split, ...] = (Split.TRAIN,)
PERSON_SEES: tuple[Split, ...] = (Split.TRAIN, Split.CALIBRATION)
UNSEALED_SEES: tuple[Split, ...] = (Split.TRAIN, Split.CALIBRATION, Split.VALID, Split.TEST)


def person_sees(unsealed: bool) -> list[Split]:
    """What a person writing a label has been shown: held-out splits only after unsealing."""
    return list(UNSEALED_SEES if unsealed else PERSON_SEES)


def is_blind(seen: Iterable[Split] | None, split: Split) -> bool:
    """A score on `split` of a label whose author saw `seen`; unknown `seen` is not blind."""
    return seen is not None and split not in set(seen)


def is_sealed(view: NeuronView, annotator: str | None) -> bool:
    """Whether `annotator` has the neuron's held-out windows sealed (None: nobody unsealed)."""
    return annotator is None or annotator not in view.unsealed_by


def visible(examples: Iterable[Example], sealed: bool) -> list[Example]:
    """The examples a person is shown: all, or without the held-out ones while sealed."""
    return [e for e in examples if not (sealed and e.split in HELD_OUT)]


def held_out_count(view: NeuronView) -> int:
    """How many of the neuron's examples are held out, of every kind (what sealing hides)."""
    return sum(e.split in HELD_OUT for e in view.examples())

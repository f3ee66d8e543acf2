"""`labeller import FILE`: merge a `json` export into this catalogue without losing either side.

Rules (the SQL is in `labeller.catalogue.exchange`; this module only decides):

- models match by name, scans by (model, parameters, start time), neurons by (model, layer,
  neuron), windows by (scan, document, offset), explanations by (neuron, source, text), scores by
  (explanation, simulator, split, method, prompt version), history entries by (neuron,
  explanation, action, annotator, time, before, after). What is already here is not added again,
  so importing the same file twice changes nothing.
- A neuron we lack comes in with its stats and examples; one we have keeps ours (one set of
  evidence per neuron; a different scan on their side is counted in `kept_our_evidence`).
- Their history entries we lack are appended (label_history is append-only), in their order.
- A new explanation comes in with its status. For one we both have, ours stands unless ours is
  `proposed` and theirs is not, the neuron has no conflict, and their decision is newer than our
  latest entry for that label. An older decision (one we already hold, or one made before ours)
  never overwrites a newer one: ours stays and the report lists it as a conflict.
- Conflict: the neuron has an accepted label here and a different accepted label there. Nothing
  of ours changes, their label comes in as `proposed`, and the report says so for a person.
- Every status an import sets is recorded like a person's change: the history entry that made it
  (theirs, or one by the importing annotator), so the neuron's version moves and a stale
  `--expect-version` is refused. When their entries leave a label's history in a state we did not
  take (a conflict, an older decision), an entry by the importing annotator follows them and
  records the state the label is really in, so the history always ends in the stored status.
- The file is validated in full before anything is written; then neurons are written in batches,
  each batch one transaction, so an interrupted import leaves a consistent catalogue and running
  it again finishes the job.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store
from labeller.catalogue.detectors import detector_scores_of, save_detector_scores
from labeller.catalogue.labels import append_history
from labeller.errors import UserError
from labeller.exchange.json_format import (
    ExportExplanation,
    ExportHeader,
    ExportHistoryEntry,
    ExportLabelState,
    ExportNeuron,
    read_export,
)
from labeller.records import (
    STATUS_ACTIONS,
    Example,
    Explanation,
    HistoryAction,
    HistoryEntry,
    LabelState,
    LabelStatus,
    ModelRecord,
    Record,
    neuron_name,
    utc_now,
)

BATCH_SIZE = 100
IMPORTER = "import"  # the annotator of an import's own entries when the caller names nobody


class ImportReport(Record):
    """What an import added or changed; `conflicts` are left for a person to resolve."""

    models_added: int = 0
    scans_added: int = 0
    neurons_added: int = 0
    neurons_updated: int = 0
    neurons_unchanged: int = 0
    kept_our_evidence: int = Field(
        default=0, description="neurons scanned differently on each side: our evidence kept"
    )
    explanations_added: int = 0
    statuses_changed: int = 0
    scores_added: int = 0
    detector_scores_added: int = 0
    history_added: int = 0
    conflicts: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list, description="checks that could not be made (older files)"
    )

    def summary(self) -> str:
        line = (
            f"{self.neurons_added} neurons added, {self.neurons_updated} updated, "
            f"{self.neurons_unchanged} unchanged; {self.explanations_added} labels, "
            f"{self.scores_added} scores, {self.detector_scores_added} detector scores, "
            f"{self.history_added} history entries added; "
            f"{self.statuses_changed} statuses changed; {self.models_added} models and "
            f"{self.scans_added} scans added"
        )
        if self.conflicts:
            line += f"; {len(self.conflicts)} conflicts left for review"
        return line


def import_catalogue(
    catalogue: Catalogue,
    path: Path,
    *,
    on_progress: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
    annotator: str = IMPORTER,
) -> ImportReport:
    """Merge the `json` export at `path`; `on_progress(n)` after each of its neurons.

    `annotator` is who the history names for the changes the import itself decides (the person
    running it), as for any change a person makes.
    """
    path = Path(path)
    report = ImportReport()
    with read_export(path) as reader:
        _check_models(catalogue, path, reader.header, report)
        for _ in reader.neurons():
            pass  # validate everything first: a broken file writes nothing
    with read_export(path) as reader:
        header = reader.header
        with catalogue.write_transaction():
            model_ids, scan_ids = _models_and_scans(catalogue, header, report)
        done = 0
        batch: list[ExportNeuron] = []

        def flush() -> None:
            nonlocal done
            with catalogue.write_transaction():
                for neuron in batch:
                    _merge_neuron(catalogue, neuron, model_ids, scan_ids, report, annotator)
                    done += 1
                    if on_progress:
                        on_progress(done)
            batch.clear()

        for neuron in reader.neurons():
            batch.append(neuron)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    return report


def _check_models(
    catalogue: Catalogue, path: Path, header: ExportHeader, report: ImportReport
) -> None:
    """A model of the same name here must be the same model: same shape and activation, and the
    same weights where both sides recorded a fingerprint (a renamed export of another model
    would otherwise attach its labels to our neurons)."""
    for theirs in header.models:
        ours = store.find_model(catalogue, theirs.name)
        if ours is None:
            continue
        if _shape(ours) != _shape(theirs):
            raise UserError(
                f"{path}: its model {theirs.name!r} is not the model of that name here "
                f"(layers, d_mlp, d_model, d_vocab, activation: {_shape(theirs)} there, "
                f"{_shape(ours)} here); import it into another catalogue"
            )
        if ours.weights_fingerprint and theirs.weights_fingerprint:
            if ours.weights_fingerprint != theirs.weights_fingerprint:
                raise UserError(
                    f"{path}: its model {theirs.name!r} is not the model of that name here "
                    "(its weights differ); import it into another catalogue"
                )
        else:
            report.warnings.append(
                f"model {theirs.name}: same shape, but the weights fingerprint could not be "
                "checked (recorded on only one side or neither)"
            )


def _shape(model: ModelRecord) -> tuple[int, int, int, int, str]:
    return (model.n_layers, model.d_mlp, model.d_model, model.d_vocab, model.act_fn)


def _models_and_scans(
    catalogue: Catalogue, header: ExportHeader, report: ImportReport
) -> tuple[dict[str, int], list[int]]:
    model_ids: dict[str, int] = {}
    for model in header.models:
        found = store.find_model_id(catalogue, model.name)
        if found is None:
            found = store.insert_model(catalogue, model)
            report.models_added += 1
        model_ids[model.name] = found
    scan_ids: list[int] = []
    for scan in header.scans:
        model_id = model_ids[scan.model]
        found = store.find_scan_id(catalogue, model_id, scan.params, scan.started_at)
        if found is None:
            found = store.insert_scan(
                catalogue,
                model_id,
                scan.params,
                scan.status,
                tokens_seen=scan.tokens_seen,
                windows_seen=scan.windows_seen,
                started_at=scan.started_at,
                updated_at=scan.updated_at,
            )
            report.scans_added += 1
        scan_ids.append(found)
    return model_ids, scan_ids


def _merge_neuron(
    catalogue: Catalogue,
    neuron: ExportNeuron,
    model_ids: dict[str, int],
    scan_ids: list[int],
    report: ImportReport,
    annotator: str,
) -> None:
    scan_id = scan_ids[neuron.scan] if neuron.scan is not None else None
    neuron_id = catalogue.neuron_id(model_ids[neuron.model], neuron.layer, neuron.neuron)
    added = neuron_id is None
    if neuron_id is None:
        neuron_id = store.insert_neuron(
            catalogue,
            model_ids[neuron.model],
            scan_id,
            neuron.layer,
            neuron.neuron,
            neuron.stats,
            neuron.weights,
            [
                store.StoredExample(
                    example=Example(**e.model_dump(exclude={"token_ids"})), token_ids=e.token_ids
                )
                for e in (
                    *neuron.top_examples,
                    *neuron.random_examples,
                    *neuron.quantile_examples,
                    *neuron.subset_examples,
                    *neuron.dla_top_examples,
                    *neuron.dla_bottom_examples,
                )
            ],
            [r.model_copy(update={"label": None}) for r in neuron.related_neurons]
            if neuron.related_neurons is not None
            else None,
        )
        report.neurons_added += 1
    elif store.neuron_scan_id(catalogue, neuron_id) != scan_id:
        report.kept_our_evidence += 1

    ours = store.our_explanations(catalogue, neuron_id)
    our_latest = {o.id: store.latest_entry(catalogue, o.id) for o in ours}
    conflict = _conflict(catalogue, neuron, ours)
    if conflict:
        report.conflicts.append(conflict)
    local, changed = _merge_explanations(
        catalogue, neuron, neuron_id, ours, scan_ids, conflict is not None, report
    )
    changed |= _merge_scores(catalogue, neuron, local, report)
    if added or store.neuron_scan_id(catalogue, neuron_id) == scan_id:
        changed |= _merge_detectors(catalogue, neuron, neuron_id, report)
    appended = _merge_history(catalogue, neuron, neuron_id, local, report)
    changed |= bool(appended)
    at = utc_now()
    changed |= _settle_statuses(
        catalogue,
        neuron,
        neuron_id,
        ours,
        our_latest,
        local,
        appended,
        conflict is not None,
        report,
        annotator=annotator,
        at=at,
    )
    _close_histories(
        catalogue, neuron_id, {local[i] for i in appended}, conflict is not None, annotator, at
    )
    if not added:
        if changed:
            report.neurons_updated += 1
        else:
            report.neurons_unchanged += 1


def _merge_detectors(
    catalogue: Catalogue, neuron: ExportNeuron, neuron_id: int, report: ImportReport
) -> bool:
    """Their detector scores that we lack (by detector, split, windows and method); ours are
    never overwritten. Only for a neuron whose evidence is the same scan as theirs: a score is
    about the windows it was computed on."""
    ours = {
        (d.name, d.split, d.windows, d.method) for d in detector_scores_of(catalogue, neuron_id)
    }
    new = [d for d in neuron.detectors if (d.name, d.split, d.windows, d.method) not in ours]
    if new:
        save_detector_scores(catalogue, [(neuron_id, d) for d in new])
        report.detector_scores_added += len(new)
    return bool(new)


def _conflict(
    catalogue: Catalogue, neuron: ExportNeuron, ours: list[store.StoredExplanation]
) -> str | None:
    """One line for a person when the two sides accepted different labels, else None."""
    our_accepted = [o for o in ours if o.explanation.status is LabelStatus.ACCEPTED]
    their_accepted = [e for e in neuron.explanations if e.status is LabelStatus.ACCEPTED]
    keys = {(o.explanation.source, o.explanation.text) for o in our_accepted} | {
        (e.source, e.text) for e in their_accepted
    }
    if not their_accepted or len(keys) <= 1:
        return None
    mine = [
        (
            o.explanation.text,
            store.accepted_by(catalogue, o.id) or o.explanation.annotator or o.explanation.source,
        )
        for o in our_accepted
    ]
    theirs = [(e.text, _their_acceptor(e)) for e in their_accepted]
    return (
        f"{neuron.model} {neuron_name(neuron.layer, neuron.neuron)}: "
        f"ours {_side(mine)}, theirs {_side(theirs)}"
    )


def _side(labels: list[tuple[str, str]]) -> str:
    if not labels:
        return "nothing accepted"
    return " and ".join(f"'{text}' accepted by {who}" for text, who in labels)


def _their_acceptor(explanation: ExportExplanation) -> str:
    for entry in sorted(explanation.history, key=lambda h: h.seq, reverse=True):
        if entry.after is not None and entry.after.status is LabelStatus.ACCEPTED:
            return entry.annotator or "unknown"
    return explanation.annotator or explanation.source


def _merge_explanations(
    catalogue: Catalogue,
    neuron: ExportNeuron,
    neuron_id: int,
    ours: list[store.StoredExplanation],
    scan_ids: list[int],
    conflict: bool,
    report: ImportReport,
) -> tuple[dict[int, int], bool]:
    """Their explanation index -> our explanation id, and whether anything was written."""
    by_key = {(o.explanation.source, o.explanation.text): o for o in ours}
    best_sources = {o.explanation.source for o in ours if o.explanation.best}
    local: dict[int, int] = {}
    changed = False
    for index, theirs in enumerate(neuron.explanations):
        mine = by_key.get((theirs.source, theirs.text))
        if mine is not None:
            local[index] = mine.id
            continue
        accepted = theirs.status is LabelStatus.ACCEPTED
        status = LabelStatus.PROPOSED if conflict and accepted else theirs.status
        best = theirs.best and theirs.source not in best_sources
        if best:
            best_sources.add(theirs.source)
        local[index] = store.insert_explanation(
            catalogue,
            neuron_id,
            Explanation(
                text=theirs.text,
                source=theirs.source,
                status=status,
                prompt_version=theirs.prompt_version,
                producer_model=theirs.producer_model,
                annotator=theirs.annotator,
                best=best,
                chosen_on=theirs.chosen_on if best else None,
                reported_on=theirs.reported_on if best else None,
                seen=theirs.seen,
                created_at=theirs.created_at,
            ),
            scan_id=scan_ids[theirs.scan] if theirs.scan is not None else None,
            updated_at=theirs.updated_at,
        )
        report.explanations_added += 1
        changed = True
    return local, changed


def _merge_scores(
    catalogue: Catalogue, neuron: ExportNeuron, local: dict[int, int], report: ImportReport
) -> bool:
    changed = False
    for index, theirs in enumerate(neuron.explanations):
        existing = store.score_keys(catalogue, local[index])
        for score in theirs.scores:
            key = (score.simulator, score.split.value, score.method.value, score.prompt_version)
            if key in existing:
                continue
            store.insert_score(catalogue, local[index], score)
            existing.add(key)
            report.scores_added += 1
            changed = True
    return changed


HistoryKey = tuple[Any, ...]


def _canon(state: LabelState | ExportLabelState | None) -> tuple[str, str, str] | None:
    """What makes two label states the same on both sides (not their explanation ids)."""
    if state is None:
        return None
    return (state.text, state.status.value, state.source)


def _merge_history(
    catalogue: Catalogue,
    neuron: ExportNeuron,
    neuron_id: int,
    local: dict[int, int],
    report: ImportReport,
) -> dict[int, set[int]]:
    """Append their entries we lack, oldest first; the k-th copy of an entry matches our k-th.

    Returns, per explanation index, the `seq`s of their entries that were new here.
    """
    explanation_keys = {
        o.id: (o.explanation.source, o.explanation.text)
        for o in store.our_explanations(catalogue, neuron_id)
    }
    available: dict[HistoryKey, list[int]] = defaultdict(list)
    for stored in store.our_history(catalogue, neuron_id):
        h = stored.entry
        key = (
            explanation_keys.get(h.explanation_id) if h.explanation_id is not None else None,
            h.action.value,
            h.annotator,
            h.at,
            _canon(h.before),
            _canon(h.after),
        )
        available[key].append(h.id)

    theirs: list[tuple[ExportHistoryEntry, int | None]] = [(h, None) for h in neuron.history]
    for index, explanation in enumerate(neuron.explanations):
        theirs += [(h, index) for h in explanation.history]
    theirs.sort(key=lambda pair: pair[0].seq)

    seen: Counter[HistoryKey] = Counter()
    ours_for_seq: dict[int, int] = {}
    appended: dict[int, set[int]] = {}
    for entry, owner in theirs:
        owner_key = (
            (neuron.explanations[owner].source, neuron.explanations[owner].text)
            if owner is not None
            else None
        )
        key = (
            owner_key,
            entry.action.value,
            entry.annotator,
            entry.at,
            _canon(entry.before),
            _canon(entry.after),
        )
        copy = seen[key]
        seen[key] += 1
        if copy < len(available[key]):
            ours_for_seq[entry.seq] = available[key][copy]
            continue
        explanation_id = local[owner] if owner is not None else None
        ours_for_seq[entry.seq] = append_history(
            catalogue,
            neuron_id,
            explanation_id,
            entry.action,
            _state(entry.before, local, explanation_id),
            _state(entry.after, local, explanation_id),
            annotator=entry.annotator,
            at=entry.at,
            undoes=ours_for_seq.get(entry.undoes) if entry.undoes is not None else None,
            edited_from=local[entry.edited_from] if entry.edited_from is not None else None,
        )
        report.history_added += 1
        if owner is not None:
            appended.setdefault(owner, set()).add(entry.seq)
    return appended


def _settle_statuses(
    catalogue: Catalogue,
    neuron: ExportNeuron,
    neuron_id: int,
    ours: list[store.StoredExplanation],
    our_latest: dict[int, HistoryEntry | None],
    local: dict[int, int],
    appended: dict[int, set[int]],
    conflict: bool,
    report: ImportReport,
    *,
    annotator: str,
    at: str,
) -> bool:
    """Take their decision on a label still proposed here, when it is newer than ours."""
    by_id = {o.id: o for o in ours}
    changed = False
    for index, theirs in enumerate(neuron.explanations):
        mine = by_id.get(local[index])
        if (
            mine is None
            or conflict
            or mine.explanation.status is not LabelStatus.PROPOSED
            or theirs.status is LabelStatus.PROPOSED
        ):
            continue
        last = max(theirs.history, key=lambda h: h.seq, default=None)
        their_at = last.at if last else (theirs.updated_at or theirs.created_at)
        latest = our_latest.get(mine.id)
        our_at = latest.at if latest else (mine.updated_at or mine.explanation.created_at)
        known = last is not None and last.seq not in appended.get(index, set())
        if known or their_at < our_at:
            who = latest.annotator if latest and latest.annotator else "someone"
            report.conflicts.append(
                f"{neuron.model} {neuron.layer}.{neuron.neuron}: '{theirs.text}' is "
                f"{theirs.status.value} in the file but {who} made it proposed here at {our_at}, "
                f"after that decision ({their_at}): kept ours"
            )
            continue
        before = store.our_label_state(catalogue, mine.id)
        store.set_explanation_status(catalogue, mine.id, theirs.status, at)
        if last is None or last.after is None or last.after.status is not theirs.status:
            # Their file holds no entry that made this status: the import records it itself.
            append_history(
                catalogue,
                neuron_id,
                mine.id,
                STATUS_ACTIONS[theirs.status],
                before,
                store.our_label_state(catalogue, mine.id),
                annotator=annotator,
                at=at,
            )
        report.statuses_changed += 1
        changed = True
    return changed


def _close_histories(
    catalogue: Catalogue,
    neuron_id: int,
    explanation_ids: set[int],
    conflict: bool,
    annotator: str,
    at: str,
) -> None:
    """After their entries, record the state each label is really in when theirs ended elsewhere:
    `history` then never shows their accept on a label that stayed proposed here."""
    for explanation_id in sorted(explanation_ids):
        latest = store.latest_entry(catalogue, explanation_id)
        stored = store.our_label_state(catalogue, explanation_id)
        shown = latest.after if latest is not None else None
        if shown is not None and shown.status is stored.status:
            continue
        action = (
            HistoryAction.DEMOTE  # their accepted label, kept proposed beside our accepted one
            if conflict
            and shown is not None
            and shown.status is LabelStatus.ACCEPTED
            and stored.status is LabelStatus.PROPOSED
            else STATUS_ACTIONS[stored.status]
        )
        append_history(
            catalogue, neuron_id, explanation_id, action, shown, stored, annotator=annotator, at=at
        )


def _state(
    state: ExportLabelState | None, local: dict[int, int], owner: int | None
) -> LabelState | None:
    """Their label state with our explanation id (the owning explanation when none is named)."""
    if state is None:
        return None
    target = local[state.explanation] if state.explanation is not None else owner
    assert target is not None  # validated: a state outside any explanation names one
    return LabelState(
        explanation_id=target, text=state.text, status=state.status, source=state.source
    )

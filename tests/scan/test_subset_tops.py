"""Corpus subsets in the scan: each subset's top windows equal brute force over that subset's
windows, merge across ranks like one pass, and named datasets and subset fields tag windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from builders import run_cli, scan_params, synthetic_documents

from labeller.catalogue import Catalogue
from labeller.corpus import iter_corpus, iter_windows, parse_dataset_specs
from labeller.errors import UserError
from labeller.model.activations import batch_inputs, neuron_activations
from labeller.records import TOP_SPLITS, ExampleKind
from labeller.scan.accumulators import SubsetTopWindows, merge_subset_tops
from labeller.scan.runner import run_scan

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sourced_corpus(tmp_path_factory) -> Path:
    """40 documents whose `source` field is `alpha` or `beta`, unevenly (beta every third)."""
    path = tmp_path_factory.mktemp("sourced") / "docs.jsonl"
    with path.open("w") as handle:
        for i, text in enumerate(synthetic_documents(40, seed=5)):
            source = "beta" if i % 3 == 0 else "alpha"
            handle.write(json.dumps({"text": text, "source": source}) + "\n")
    return path


def test_subset_top_windows_equal_brute_force(tiny_model, tiny_model_dir, sourced_corpus, tmp_path):
    params = scan_params(tiny_model_dir, sourced_corpus, subset_field="source", subset_top_k=3)
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        run_scan(catalogue, tiny_model, params, batch_size=5)
        documents = iter_corpus(params.dataset, {}, subset_field="source")
        windows = list(iter_windows(documents, tiny_model.encode, params.ctx))
        maxima: dict[int, list[torch.Tensor]] = {layer: [] for layer in params.layers}
        for window in windows:
            ids, _ = batch_inputs(tiny_model, [window.token_ids])
            acts = neuron_activations(tiny_model, ids, params.layers)
            for layer in params.layers:
                maxima[layer].append(acts[layer][0].amax(dim=0))
        for layer in params.layers:
            for neuron in range(tiny_model.d_mlp):
                view = catalogue.neuron_view(None, layer, neuron)
                assert {e.kind for e in view.subset_examples} == {ExampleKind.SUBSET_TOP}
                for first, subset in ((0, "alpha"), (3, "beta")):
                    seen: set[tuple[int, ...]] = set()
                    expected = []
                    for window, m in zip(windows, maxima[layer], strict=True):
                        if window.subset == subset and tuple(window.token_ids) not in seen:
                            seen.add(tuple(window.token_ids))
                            expected.append(float(m[neuron]))
                    expected = sorted(expected, reverse=True)[:3]
                    got = [e for e in view.subset_examples if e.subset == subset]
                    assert [e.max_activation for e in got] == pytest.approx(expected, rel=1e-4)
                    assert [e.rank for e in got] == [first, first + 1, first + 2]
                    assert [e.split for e in got] == [TOP_SPLITS[i % 4] for i in range(3)]
                    assert all(e.document.startswith(str(sourced_corpus)) for e in got)
                # the corpus-wide top windows carry their subset too
                assert {e.subset for e in view.top_examples} <= {"alpha", "beta"}


def test_subset_state_survives_a_checkpoint(tiny_model, tiny_model_dir, sourced_corpus, tmp_path):
    """Interrupted after the first batch and resumed, the subset windows equal one run's."""
    params = scan_params(tiny_model_dir, sourced_corpus, subset_field="source", subset_top_k=2)
    with Catalogue.open(tmp_path / "one.db", create=True) as one:
        run_scan(one, tiny_model, params, batch_size=4)
        whole = [one.neuron_view(None, 1, n).subset_examples for n in range(4)]
    calls = iter(range(10**6))
    with Catalogue.open(tmp_path / "two.db", create=True) as two:
        from labeller.errors import ScanInterrupted

        with pytest.raises(ScanInterrupted):
            run_scan(two, tiny_model, params, batch_size=4, stop_requested=lambda: next(calls) == 1)
        run_scan(two, tiny_model, params, batch_size=4)
        resumed = [two.neuron_view(None, 1, n).subset_examples for n in range(4)]
    assert [[(e.subset, e.document, e.offset) for e in xs] for xs in resumed] == [
        [(e.subset, e.document, e.offset) for e in xs] for xs in whole
    ]


def test_merged_subset_tops_equal_one_pass():
    """Three ranks that each met some of the subsets merge to what one pass keeps."""
    gen = torch.Generator().manual_seed(7)
    batches = []
    for b in range(10):
        hashes = torch.randint(0, 50, (6,), generator=gen)
        acts = torch.stack(
            [torch.randn(4, 5, generator=torch.Generator().manual_seed(int(h))) for h in hashes]
        )
        subsets = [("code", "prose", None)[int(h) % 3] for h in hashes]
        batches.append((acts, hashes, torch.arange(b * 6, (b + 1) * 6), subsets))

    def feed(keep) -> SubsetTopWindows:
        top = SubsetTopWindows(3, 5, 4, CPU)
        for acts, hashes, index, subsets in batches:
            rows = [i for i in range(len(index)) if keep(int(index[i]))]
            if rows:
                pick = torch.tensor(rows)
                top.update(
                    acts[pick],
                    acts[pick].amax(dim=1),
                    index[pick],
                    hashes[pick],
                    [subsets[i] for i in rows],
                )
        return top

    whole = feed(lambda i: True)
    assert sorted(whole.subsets) == ["code", "prose"]
    merged = merge_subset_tops([feed(lambda i, r=r: i % 3 == r).state() for r in range(3)], 3)
    assert sorted(merged) == ["code", "prose"]
    for name, state in whole.state().items():
        for key in ("values", "window", "hash", "argmax"):
            assert torch.equal(merged[name][key], state[key]), (name, key)
        assert torch.allclose(merged[name]["acts"], state["acts"])


def test_named_datasets_take_turns_by_document(tmp_path):
    code, prose = tmp_path / "code.jsonl", tmp_path / "prose"
    code.write_text("".join(json.dumps({"text": f"x = {i}"}) + "\n" for i in range(3)))
    prose.mkdir()
    (prose / "a.txt").write_text("Once upon a time.")
    dataset, subsets = parse_dataset_specs([f"code={code}", f"prose={prose}"])
    assert subsets == {"code": str(code), "prose": str(prose)}
    assert dataset == f"code={code} prose={prose}"
    docs = list(iter_corpus(dataset, subsets))
    assert [(d.subset, d.text) for d in docs] == [
        ("code", "x = 0"),
        ("prose", "Once upon a time."),
        ("code", "x = 1"),
        ("code", "x = 2"),
    ]


def test_plain_dataset_keeps_working(tiny_corpus, tmp_path):
    assert parse_dataset_specs([str(tiny_corpus)]) == (str(tiny_corpus), {})
    assert all(d.subset is None for d in iter_corpus(str(tiny_corpus), {}))
    odd = tmp_path / "a=b.txt"  # an existing path with '=' is a plain corpus, not a subset
    odd.write_text("text")
    assert parse_dataset_specs([str(odd)]) == (str(odd), {})


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["demo", "code=demo"], "each name a subset"),
        (["a=demo", "a=demo"], "named twice"),
        (["a=/no/such.jsonl"], "no corpus at /no/such.jsonl"),
    ],
)
def test_bad_dataset_specs(specs, message):
    with pytest.raises(UserError, match=message):
        parse_dataset_specs(specs)


def test_subset_field_errors(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(UserError, match="no string field 'source'; set --subset-field"):
        list(iter_corpus(str(path), {}, subset_field="source"))
    monkeypatch.setattr("labeller.corpus.MAX_SUBSETS", 2)
    path.write_text("".join(json.dumps({"text": "a", "source": i}) + "\n" for i in range(3)))
    with pytest.raises(UserError, match="more than 2 corpus subsets"):
        list(iter_corpus(str(path), {}, subset_field="source"))


def test_scan_cli_names_subsets(tiny_model_dir, tmp_path):
    code, prose = tmp_path / "code.jsonl", tmp_path / "prose.jsonl"
    for path, texts in ((code, synthetic_documents(6, 1)), (prose, synthetic_documents(6, 2))):
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    db = tmp_path / "c.db"
    run_cli(
        "scan", "--db", db, "--model", tiny_model_dir, "--dataset", f"code={code}",
        "--dataset", f"prose={prose}", "--ctx", 16, "--subset-top-k", 2,
    )  # fmt: skip
    with Catalogue.open(db, read_only=True) as catalogue:
        (scan,) = catalogue.scans()
        assert scan.params.subsets == {"code": str(code), "prose": str(prose)}
        view = catalogue.neuron_view(None, 0, 0)
    assert sorted({e.subset for e in view.subset_examples}) == ["code", "prose"]
    bad = run_cli("scan", "--db", db, "--model", tiny_model_dir, "--dataset", "demo",
                  "--dataset", f"prose={prose}", ok=False)  # fmt: skip
    assert bad.exit_code == 2
    assert bad.stderr.strip().splitlines() == [
        "error: several --dataset values must each name a subset: --dataset code=PATH "
        "--dataset prose=PATH"
    ]


@pytest.mark.slow
def test_two_ranks_keep_the_subset_windows_of_one_process(
    tiny_model, tiny_model_dir, sourced_corpus, tmp_path
):
    """Ranks meet different windows of each subset; merged, the subset tops equal one pass."""
    from builders import sharded_scan_worker
    from test_shard import assert_same_catalogue

    params = scan_params(tiny_model_dir, sourced_corpus, subset_field="source", subset_top_k=3)
    with Catalogue.open(tmp_path / "one.db", create=True) as catalogue:
        run_scan(catalogue, tiny_model, params, batch_size=4)
    db = tmp_path / "two.db"
    torch.multiprocessing.spawn(
        sharded_scan_worker,
        args=(2, str(tmp_path / "init"), str(db), str(tiny_model_dir), params.model_dump_json(), 4,
              None),
        nprocs=2,
    )  # fmt: skip
    assert_same_catalogue(
        tmp_path / "one.db", db, str(tiny_model_dir), params.layers, tiny_model.d_mlp
    )
    with Catalogue.open(db, read_only=True) as catalogue:
        view = catalogue.neuron_view(None, 1, 2)
    assert sorted({e.subset for e in view.subset_examples}) == ["alpha", "beta"]

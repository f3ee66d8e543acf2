"""Scan throughput as a ratio of a bare forward pass, measured side by side in one run.

Both passes see the same pre-tokenised windows in the same batches and run the same hooked
forward pass; the bare pass's hooks keep nothing. Runs are interleaved (bare, scan, bare, scan,
...) and the median of each is compared, because these machines are noisy. With activation
bands on (`--band-windows`, default 4 as `labeller scan`), a scan without them runs in the same
rotation, so their cost is measured side by side too. Also prints the catalogue bytes per neuron
after writing the scan's results (with bands, and without).

    python benchmarks/scan_throughput.py                       # demo-solu-1l on CPU
    python benchmarks/scan_throughput.py --config gpt2-small --device cuda --tokens 2000000
    python benchmarks/scan_throughput.py --dla --correlations  # also scans with those, side by side

`--whole-process` times whole processes instead, start to exit: `python -m labeller scan` with
its catalogue written, against a bare forward-pass process over the same tokens that uses the
whole machine (every core, or the GPU), for the demo models and a randomly initialised 4-layer
model (width 256, 1,024 neurons a layer, saved as a native model dir), interleaved, medians. The
scan's compiled kernels are built (or found in their cache) before the first timed run:

    python benchmarks/scan_throughput.py --whole-process --tokens 150000 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

# Only what the bare process needs is imported here: the scan's modules (the catalogue, the
# kernels) are imported where they are used, so the bare process does not pay for them.
from labeller.corpus import Window, iter_documents, iter_windows
from labeller.model.activations import batch_inputs, keep_freed_memory, neuron_activations
from labeller.model.loading import LoadedModel, load_model, resolve_device

if TYPE_CHECKING:
    from labeller.records import ScanParams
    from labeller.scan.runner import Scanner


def gpt2_sized_model(device: str) -> LoadedModel:
    """A randomly initialised model with GPT-2 small's shape (the demo tokenizer feeds it)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot

    demo = load_model("demo-gelu-1l", device="cpu")
    cfg = TransformerBridgeConfig(
        d_model=768,
        n_layers=12,
        d_mlp=3072,
        d_head=64,
        n_heads=12,
        n_ctx=1024,
        d_vocab=50257,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="standard",
        architecture="TransformerLensNative",
        seed=0,
    )
    torch_device = resolve_device(device)
    bridge = boot(cfg, tokenizer=demo.tokenizer, device=torch_device, model_name="gpt2-sized")
    bridge.eval()
    return LoadedModel(name="gpt2-sized", source="benchmark", bridge=bridge, device=torch_device)


def four_layer_model_dir(path: Path) -> Path:
    """A randomly initialised 4-layer model (width 256, 1,024 neurons a layer, the demo
    tokenizer) saved as a native model dir, so `labeller scan --model PATH` loads it."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge.sources.native import boot

    from labeller.model.native_dir import save_native_model

    demo = load_model("demo-gelu-1l", device="cpu")
    cfg = TransformerBridgeConfig(
        d_model=256,
        n_layers=4,
        d_mlp=1024,
        d_head=64,
        n_heads=4,
        n_ctx=1024,
        d_vocab=demo.bridge.cfg.d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="standard",
        architecture="TransformerLensNative",
        seed=0,
    )
    bridge = boot(cfg, tokenizer=demo.tokenizer, device=torch.device("cpu"), model_name="4l")
    save_native_model(bridge, demo.tokenizer, path, {"benchmark": "random 4-layer"})
    return path


def synchronise(model: LoadedModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def bare_pass(model: LoadedModel, batches: list[list[Window]], layers: list[int]) -> float:
    start = time.perf_counter()
    for batch in batches:
        ids, _ = batch_inputs(model, [w.token_ids for w in batch])
        neuron_activations(model, ids, layers, keep=False)
    synchronise(model)
    return time.perf_counter() - start


def scan_pass(model: LoadedModel, batches: list[list[Window]], params: ScanParams) -> Scanner:
    from labeller.scan.runner import Scanner

    scanner = Scanner(model, params)
    for batch in batches:
        scanner.process(batch)
    scanner.flush()
    synchronise(model)
    return scanner


def bare_process(
    model_spec: str, dataset: str, tokens: int, ctx: int, batch: int, device: str
) -> None:
    """The baseline process: the same tokens, batches and hooked forward pass as the scan, on
    every core, keeping nothing; on CPU with the allocator setting the scan makes (without it
    glibc gave the freed activations back after some batches, and the bare pass faulted them
    back in: 0.15-0.95 M page faults a run against 0.13 M)."""
    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model(model_spec, device)
    if model.device.type == "cpu":
        keep_freed_memory()
    layers = list(range(model.n_layers))
    left = tokens
    pending: list[list[int]] = []
    for window in iter_windows(iter_documents(dataset), model.encode, ctx):
        pending.append(window.token_ids[:left])
        left -= len(pending[-1])
        if len(pending) == batch or left <= 0:
            ids, _ = batch_inputs(model, pending)
            neuron_activations(model, ids, layers, keep=False)
            pending = []
        if left <= 0:
            break
    if pending:
        ids, _ = batch_inputs(model, pending)
        neuron_activations(model, ids, layers, keep=False)
    synchronise(model)
    gc.freeze()  # exits as `labeller` does (labeller/cli.py, main), so both processes exit alike


def _used(before: resource.struct_rusage, after: resource.struct_rusage) -> tuple[float, int]:
    """A finished child's CPU seconds (user and system) and minor page faults."""
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, after.ru_minflt - before.ru_minflt


def _fmt_usage(runs: list[tuple[float, int]]) -> str:
    """Medians: a baseline that faults its memory back in (or waits) is not the best bare pass."""
    cpu = statistics.median(c for c, _ in runs)
    faults = statistics.median(f for _, f in runs)
    return f"median CPU {cpu:.1f} s, {faults / 1e6:.2f} M page faults"


def whole_process(args: argparse.Namespace) -> None:
    """Interleaved whole-process runs per model: the bare pass on every core against
    `labeller scan` as it runs by default (on CPU the model on every core, then the compiled
    kernels on every core)."""
    python = sys.executable
    here = Path(__file__).resolve()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = str(here.parents[1])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        models = [*args.models, str(four_layer_model_dir(Path(tmp) / "random-4l-256x1024"))]
        db = Path(tmp) / "scan.db"
        warm_up = [python, "-m", "labeller", "scan", "--db", str(Path(tmp) / "warm.db")]
        warm_up += ["--model", models[0], "--dataset", args.dataset, "--tokens", "500"]
        subprocess.run(warm_up, env=env, check=True, capture_output=True)  # compiles the kernels
        for device in devices:
            for spec in models:
                common = ["--dataset", args.dataset, "--ctx", str(args.ctx), "--device", device]
                common += ["--batch-size", str(args.batch_size), "--tokens", str(args.tokens)]
                bare_cmd = [python, str(here), "--bare-process", "--model", spec, *common]
                scan_cmd = [python, "-m", "labeller", "scan", "--db", str(db), "--model", spec]
                runs = {"bare": bare_cmd, "scan": [*scan_cmd, *common]}
                times: dict[str, list[float]] = {name: [] for name in runs}
                usage: dict[str, list[tuple[float, int]]] = {name: [] for name in runs}
                for _ in range(args.repeats):
                    for name, cmd in runs.items():
                        for leftover in Path(tmp).glob("scan.db*"):
                            leftover.unlink()
                        before = resource.getrusage(resource.RUSAGE_CHILDREN)
                        start = time.perf_counter()
                        subprocess.run(cmd, env=env, check=True, capture_output=True)
                        times[name].append(time.perf_counter() - start)
                        usage[name].append(
                            _used(before, resource.getrusage(resource.RUSAGE_CHILDREN))
                        )
                bare = statistics.median(times["bare"])
                print(
                    f"{Path(spec).name} on {device}, {args.tokens:,} tokens; bare process "
                    f"{bare:.1f} s (runs {_fmt(times['bare'])}; {_fmt_usage(usage['bare'])})",
                    flush=True,
                )
                scan = statistics.median(times["scan"])
                print(
                    f"  scan: {scan:.1f} s (runs {_fmt(times['scan'])}; "
                    f"{_fmt_usage(usage['scan'])}); whole-process ratio bare / scan = "
                    f"{bare / scan:.3f} (goal >= 0.9)",
                    flush=True,
                )
    if devices == ["cpu"]:
        print("no CUDA device here: no GPU numbers were measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-solu-1l")
    parser.add_argument("--config", choices=["gpt2-small"], default=None)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--ctx", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--random", type=int, default=20)
    parser.add_argument("--band-windows", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--whole-process", action="store_true")
    parser.add_argument("--dla", action="store_true", help="also time a scan with --dla")
    parser.add_argument(
        "--correlations", action="store_true", help="also time a scan with --correlations"
    )
    parser.add_argument("--models", nargs="*", default=["demo-solu-1l", "demo-gelu-1l"])
    parser.add_argument("--bare-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_process:
        bare_process(args.model, args.dataset, args.tokens, args.ctx, args.batch_size, args.device)
        return
    if args.whole_process:
        whole_process(args)
        return
    in_process(args)


def in_process(args: argparse.Namespace) -> None:
    """The scan's variants against the bare pass in this process (see the module)."""
    from labeller.catalogue import Catalogue
    from labeller.records import ScanParams

    model = gpt2_sized_model(args.device) if args.config else load_model(args.model, args.device)
    if model.device.type == "cpu":
        keep_freed_memory()  # as `labeller scan` does; the bare pass shares the process
    layers = list(range(model.n_layers))
    windows = iter_windows(iter_documents(args.dataset), model.encode, args.ctx)
    selected: list[Window] = []
    seen = 0
    for window in windows:
        selected.append(window)
        seen += len(window.token_ids)
        if seen >= args.tokens:
            break
    batches = [selected[i : i + args.batch_size] for i in range(0, len(selected), args.batch_size)]
    params = ScanParams(
        model=model.name,
        dataset=args.dataset,
        layers=layers,
        tokens=seen,
        ctx=args.ctx,
        top_k=args.top_k,
        random=args.random,
        seed=0,
        histogram_bins=64,
        band_windows=args.band_windows,
    )
    variants = {"scan": params}
    if args.band_windows:
        variants["scan, no bands"] = params.model_copy(update={"band_windows": 0})
    if any(w.subset is not None for w in selected):  # the demo's code and prose
        variants["scan, no subsets"] = params.model_copy(update={"subset_top_k": 0})
    if args.dla:
        variants["scan, --dla"] = params.model_copy(update={"dla": True})
    if args.correlations:
        variants["scan, --correlations"] = params.model_copy(update={"correlations": "layer"})
    print(
        f"model {model.name} ({model.n_layers} layers x {model.d_mlp} neurons) on "
        f"{model.device}, torch threads {torch.get_num_threads()}; {seen:,} tokens in "
        f"{len(batches)} batches of {args.batch_size} x {args.ctx}"
    )
    bare_pass(model, batches[:3], layers)  # warm-up
    for variant in variants.values():
        scan_pass(model, batches[:3], variant)
    bare_times: list[float] = []
    scan_times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    scanners: dict[str, Scanner] = {}
    for _ in range(args.repeats):
        bare_times.append(bare_pass(model, batches, layers))
        for name, variant in variants.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            scanners[name] = scan_pass(model, batches, variant)
            scan_times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    bare = statistics.median(bare_times)
    print(f"bare forward pass: {seen / bare:12,.0f} tokens/s  (runs: {_fmt(bare_times)})")
    for name, times in scan_times.items():
        scan = statistics.median(times)
        print(f"{name:<17}: {seen / scan:12,.0f} tokens/s  (runs: {_fmt(times)})")
        print(f"  throughput ratio {name} / bare = {bare / scan:.3f}  (goal >= 0.9)")
    median = {name: statistics.median(times) for name, times in scan_times.items()}
    cpu = {name: statistics.median(times) for name, times in cpu_times.items()}
    costs = [
        ("scan, no bands", "scan", "bands"),
        ("scan, no subsets", "scan", "subsets"),
        ("scan", "scan, --dla", "--dla"),
        ("scan", "scan, --correlations", "--correlations"),
    ]
    for without, with_it, what in costs:
        if without in median and with_it in median:
            print(
                f"{what.lstrip('-')} cost: scan with / without {what} throughput = "
                f"{median[without] / median[with_it]:.3f} (wall time); process CPU time "
                f"without / with = {cpu[without] / cpu[with_it]:.3f} (both threads: what bounds "
                f"throughput when every core is busy; CPU runs {_fmt(cpu_times[with_it])})"
            )

    for name, variant in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.db"
            start = time.perf_counter()
            with Catalogue.open(path, create=True) as catalogue:
                model_id = catalogue.upsert_model(model.record())
                scan_id = catalogue.create_scan(model_id, variant)
                scanners[name].write_results(catalogue, scan_id, model_id)
            written = time.perf_counter() - start
            neurons = len(layers) * model.d_mlp
            size = sum(p.stat().st_size for p in Path(tmp).iterdir())
            print(
                f"catalogue ({name}): {size:,} bytes for {neurons:,} neurons = "
                f"{size / neurons:,.0f} bytes per neuron (top-k {args.top_k}, random "
                f"{args.random}, band windows {variant.band_windows}, ctx {args.ctx}); "
                f"written in {written:.1f} s"
            )


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}s" for t in times)


if __name__ == "__main__":
    main()

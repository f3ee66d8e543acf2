"""Cost of the exact pair-correlation sums (labeller.scan.correlations) at GPT-2 small's width,
side by side with the float32 product of the same activations (what a GPU-less run is bound by).

Prints the memory of the float64 state, the median time per batch of tokens for the float64
update and for a bare float32 `x.T @ x`, their ratio, and the seconds per million tokens per
layer that follow.

    python benchmarks/correlations.py                       # 3072 neurons, CPU
    python benchmarks/correlations.py --device cuda --tokens-per-batch 16384
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from labeller.scan.correlations import PairSums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=3072)
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.tokens_per_batch, args.neurons, device=device)
    sums = PairSums(args.neurons, args.neurons, device)
    state_bytes = sum(t.numel() * t.element_size() for t in sums.state().values())

    def timed(step: object) -> float:
        start = time.perf_counter()
        step()  # type: ignore[operator]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    exact, bare = [], []
    for _ in range(args.repeats):  # interleaved: the machine's load hits both alike
        exact.append(timed(lambda: sums.update(x)))
        bare.append(timed(lambda: x.T @ x))
    per_batch, per_batch_bare = statistics.median(exact), statistics.median(bare)
    per_million = per_batch * 1e6 / args.tokens_per_batch
    print(f"neurons {args.neurons}, batch {args.tokens_per_batch} tokens, {args.device}")
    print(f"state: {state_bytes / 1e6:.1f} MB (float64 sums; Σxy is {args.neurons}² x 8 bytes)")
    print(f"float64 update: {per_batch * 1e3:.1f} ms/batch, {per_million:.0f} s per 1M tokens")
    print(f"float32 x.T @ x: {per_batch_bare * 1e3:.1f} ms/batch")
    print(f"ratio float64 update / float32 product: {per_batch / per_batch_bare:.2f}")


if __name__ == "__main__":
    main()

"""Pearson correlation of every pair of neurons, accumulated exactly over a stream of tokens.

Two sets of neurons X (n_x of them) and Y (n_y) seen on the same tokens: within one layer X and
Y are the same activations, between adjacent layers or between two models they differ. The
state is the token count and the float64 power sums Σx, Σy, Σx², Σy² and the matrix Σxy, so
the batches of one process and the shards of torchrun ranks add up to exactly what one pass
over all tokens gives (up to float64 rounding in the order of the additions).

Cost for GPT-2 small within a layer (3072 neurons): Σxy is 3072² float64 = 75.5 MB per layer,
and each token costs one row of a float64 matrix product, 2 * 3072² = 18.9 MFLOP.
"""

from __future__ import annotations

import torch

from labeller.records import RelatedNeuron

State = dict[str, torch.Tensor]


class PairSums:
    """Running power sums of two neuron sets over the same tokens."""

    def __init__(self, n_x: int, n_y: int, device: torch.device) -> None:
        f64 = torch.float64
        self.count = torch.zeros((), dtype=f64, device=device)
        self.sum_x = torch.zeros(n_x, dtype=f64, device=device)
        self.sum_y = torch.zeros(n_y, dtype=f64, device=device)
        self.sum_xx = torch.zeros(n_x, dtype=f64, device=device)
        self.sum_yy = torch.zeros(n_y, dtype=f64, device=device)
        self.sum_xy = torch.zeros((n_x, n_y), dtype=f64, device=device)

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """x: [tokens, n_x] and y: [tokens, n_y] activations of the same real tokens (padding
        already dropped); y None means Y is X (correlations within one set)."""
        x64 = x.to(torch.float64)
        y64 = x64 if y is None else y.to(torch.float64)
        if y64.shape[0] != x64.shape[0]:
            raise ValueError(f"x has {x64.shape[0]} tokens but y has {y64.shape[0]}")
        self.count += x64.shape[0]
        self.sum_x += x64.sum(dim=0)
        self.sum_y += y64.sum(dim=0)
        self.sum_xx += (x64 * x64).sum(dim=0)
        self.sum_yy += (y64 * y64).sum(dim=0)
        self.sum_xy.addmm_(x64.T, y64)

    def state(self) -> State:
        return {name: getattr(self, name) for name in STATE_NAMES}

    def load(self, state: State) -> None:
        for name in STATE_NAMES:
            setattr(self, name, state[name].clone())

    def correlation(self) -> torch.Tensor:
        """Pearson r [n_x, n_y] in float64; NaN where either neuron was constant (no r exists,
        and 0 would claim an absence of correlation that was never measured)."""
        return correlation_from_state(self.state())


# A variance this small next to the mean square is below what float64 power sums resolve: the
# neuron is constant as far as these sums can tell.
CONSTANT_RELATIVE_VARIANCE = 1e-12
STATE_NAMES = ("count", "sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy")


def merge_pair_sums(states: list[State]) -> State:
    """The sums of the union of the shards' tokens: power sums simply add."""
    return {name: torch.stack([s[name] for s in states]).sum(dim=0) for name in STATE_NAMES}


def correlation_from_state(state: State) -> torch.Tensor:
    n = state["count"]
    mean_x, mean_y = state["sum_x"] / n, state["sum_y"] / n
    var_x = (state["sum_xx"] / n - mean_x**2).clamp(min=0)
    var_y = (state["sum_yy"] / n - mean_y**2).clamp(min=0)
    cov = state["sum_xy"] / n - mean_x[:, None] * mean_y[None, :]
    constant_x = var_x <= CONSTANT_RELATIVE_VARIANCE * state["sum_xx"] / n
    constant_y = var_y <= CONSTANT_RELATIVE_VARIANCE * state["sum_yy"] / n
    r = (cov / torch.sqrt(var_x[:, None] * var_y[None, :])).clamp(-1.0, 1.0)
    return r.masked_fill(constant_x[:, None] | constant_y[None, :], float("nan"))


RELATED_PER_SIDE = 10


def top_related(
    blocks: list[tuple[int, torch.Tensor]], k: int = RELATED_PER_SIDE
) -> list[list[RelatedNeuron]]:
    """Per neuron of one layer, its k most correlated (r > 0, descending) and k most
    anti-correlated (r < 0, ascending) neurons among `blocks`: (other layer, r [n, n_other]),
    with NaN (a constant neuron, or the neuron itself) never chosen."""
    n = blocks[0][1].shape[0]
    r = torch.cat([block for _, block in blocks], dim=1)
    owners = [(layer, j) for layer, block in blocks for j in range(block.shape[1])]
    found: list[list[RelatedNeuron]] = [[] for _ in range(n)]
    for sign in (1.0, -1.0):
        signed = (sign * r).nan_to_num(nan=-torch.inf)
        values, columns = signed.topk(min(k, signed.shape[1]), dim=1)
        for i, (row_values, row_columns) in enumerate(
            zip(values.tolist(), columns.tolist(), strict=True)
        ):
            for value, column in zip(row_values, row_columns, strict=True):
                if value > 0:
                    layer, neuron = owners[column]
                    found[i].append(RelatedNeuron(layer=layer, neuron=neuron, r=sign * value))
    return found


def related_within(activations: torch.Tensor, layer: int, neuron: int) -> list[RelatedNeuron]:
    """One neuron's related neurons in its own layer, from activations [tokens, d_mlp] (what
    the TUI computes on the stored random windows when the scan kept no correlations)."""
    sums = PairSums(activations.shape[1], activations.shape[1], activations.device)
    sums.update(activations)
    r = sums.correlation()[neuron : neuron + 1].clone()
    r[0, neuron] = float("nan")
    return top_related([(layer, r)])[0]

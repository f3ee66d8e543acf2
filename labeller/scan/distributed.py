"""A scan sharded over processes started by torchrun (one or several hosts).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; every rank reads (and tokenizes) the whole corpus
but runs the model only on its windows: window i (its global index in the stream) goes to rank
i % WORLD_SIZE. The stream advances in steps of batch-size x world-size windows, so at every
step boundary all ranks have consumed the same prefix and agree on the global counts without
talking. Once per step they agree (one small all-reduce) on whether to stop or checkpoint.

At the end the ranks' states are merged exactly (see the merge_* functions of accumulators) and
rank 0 alone writes the catalogue. Checkpoints gather every rank's state into rank 0, which
stores them together; resuming needs the same world size.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from labeller.errors import UserError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


SINGLE = World(0, 1, 0)


def world_from_env() -> World | None:
    """The world torchrun describes, or None outside torchrun (or with one process)."""
    if "WORLD_SIZE" not in os.environ:
        return None
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start with torchrun")
    world = World(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    )
    return world if world.size > 1 else None


def device_for(world: World, device: str) -> str:
    """On a GPU box each rank takes the GPU of its local rank."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return device


def init(world: World, device: torch.device) -> None:
    """Join the process group: gloo for CPU tensors (the per-step flags, objects), NCCL for
    CUDA tensors (the accumulator states of a GPU scan)."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def finish(together: bool) -> None:
    """Leave the group. `together`: every rank leaves at the same point (the scan's end, or a
    stop they agreed on), so they pass a barrier first. Gloo's worker threads free a finished
    collective's tensors after the caller has its result, and freeing a tensor Python knows
    takes the interpreter's lock: a rank that exited straight after its last gather could
    still have one pending when the interpreter shut down, and aborted (`terminate called
    without an active exception`, SIGABRT). The barrier lets that work drain first. After a
    failure of one rank's own the others may be inside another collective, where a barrier
    would wait for the group's timeout (30 minutes): that rank leaves at once, as before."""
    if not dist.is_initialized():
        return
    if together:
        with suppress(RuntimeError):  # a rank gone already: leave as before
            dist.barrier()
    dist.destroy_process_group()


def any_flags(*flags: bool) -> list[bool]:
    """Each flag, true if it is true on any rank."""
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.long)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's value, on every rank."""
    box = [value if world.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, world: World) -> list[Any] | None:
    """Every rank's value, in rank order, on rank 0 (None elsewhere)."""
    out: list[Any] | None = [None] * world.size if world.leader else None
    dist.gather_object(value, out, dst=0)
    return out


def scatter(values: list[Any] | None, world: World) -> Any:
    """Rank r receives values[r] (values given on rank 0)."""
    box: list[Any] = [None]
    dist.scatter_object_list(box, values if world.leader else None, src=0)
    return box[0]


def gather_state(state: dict[str, torch.Tensor], world: World) -> list[dict[str, torch.Tensor]]:
    """Every rank's accumulator state (same shapes on every rank), on every rank."""
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(world.size)]
    for name, tensor in state.items():
        tensor = tensor.contiguous()
        received = [torch.empty_like(tensor) for _ in range(world.size)]
        dist.all_gather(received, tensor)
        for part, value in zip(parts, received, strict=True):
            part[name] = value
    return parts


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks, on rank 0."""
    tensor = tensor.contiguous().clone()
    dist.reduce(tensor, dst=0)
    return tensor

"""One compiled CPU call per batch for everything the scan keeps, every layer at once (kernels.c).

As separate torch ops the scan's updates (min, max, window max, four power sums, positives,
histogram bins and counts, top-k and band-sample merges) read every activation about a dozen
times and cost a quarter of a one-thread forward pass. kernels.c does them in one pass per
block of neurons on every core, with the torch path's rules (tested equal).

The C source is compiled by the machine's C compiler (`$CC`, else `cc`) on first use, in
about a second, and the library cached under `$XDG_CACHE_HOME/labeller` (else
`~/.cache/labeller`), keyed by the source, the flags and the CPU: a later process loads it in
a millisecond. Without a compiler the scan takes the torch path (the same results, slower)
and says so.
"""

from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from labeller.errors import NonFiniteActivations
from labeller.scan.accumulators import AdaptiveHistogram, BandSample, Moments, TopWindows

SOURCE = Path(__file__).with_name("kernels.c")
NOT_FINITE = -2  # kernels.c's NOT_FINITE_STATUS (its other failure, -1, is running out of memory)
# Reassociation lets the power sums vectorise (numba's fastmath flags, which these were); not
# finite-math, so -inf and NaN stay meaningful. Maxima, bins and top-k are exact whatever
# the flags (comparisons, and products by powers of two).
FLAGS = (
    "-O3",
    "-shared",
    "-fPIC",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
    "-freciprocal-math",
    "-ffp-contract=fast",
)


class KernelsUnavailable(RuntimeError):
    """The C kernels could not be built or loaded here (no compiler, a failed build)."""


_i64, _ptr = ctypes.c_int64, ctypes.c_void_p


class _Batch(ctypes.Structure):
    _fields_ = [
        ("x", _ptr),
        ("batch", _i64),
        ("width", _i64),
        ("n", _i64),
        ("skip", _i64),
        ("lengths", _ptr),
        ("window_max", _ptr),
        ("window_index", _ptr),
        ("window_hash", _ptr),
    ]


class _Top(ctypes.Structure):
    _fields_ = [
        ("k", _i64),
        ("ctx", _i64),
        ("values", _ptr),
        ("argmax", _ptr),
        ("window", _ptr),
        ("hash", _ptr),
        ("acts", _ptr),
    ]


class _Bands(ctypes.Structure):
    _fields_ = [
        ("m", _i64),
        ("slots", _i64),
        ("ctx", _i64),
        ("exponent", _ptr),
        ("priority", _ptr),
        ("values", _ptr),
        ("argmax", _ptr),
        ("window", _ptr),
        ("acts", _ptr),
    ]


class _Histogram(ctypes.Structure):
    _fields_ = [("bins", _i64), ("inverse_width", _ptr), ("first", _ptr), ("counts", _ptr)]


class _TopPart(ctypes.Structure):
    _fields_ = [("top", _Top), ("rows", _ptr), ("row_count", _i64), ("repeated", _ptr)]


class _Moments(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_double),
        ("tokens", ctypes.c_double),
        *((name, _ptr) for name in ("mean", "m2", "m3", "m4", "positive", "min", "max")),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("batch", _Batch),
        ("extremes_only", _i64),
        ("batch_min", _ptr),
        ("batch_max", _ptr),
        ("histogram", _Histogram),
        ("moments", _Moments),
        ("parts", ctypes.POINTER(_TopPart)),
        ("part_count", _i64),
        ("bands", _Bands),
        ("band_priority", _ptr),
        ("entered", _ptr),
        ("not_finite", _i64),
    ]


def _cpu_tag() -> str:
    """What -march=native compiled for: a library built on one CPU may not run on another
    (a home directory shared across a cluster's nodes)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {flags}"


CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")


@functools.cache
def l2_bytes(caches: Path = CPU_CACHES) -> int:
    """A core's L2 cache in bytes as Linux reports it (0 where it does not): kernels.c sizes
    its blocks of neurons by it."""
    for index in sorted(caches.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data") and size[:-1].isdigit():
            return int(size[:-1]) * {"K": 2**10, "M": 2**20}.get(size[-1], 0)
    return 0


def _flags() -> tuple[str, ...]:
    native = ("-march=native",) if platform.machine() in ("x86_64", "AMD64") else ()
    return (*FLAGS, *native, f"-DL2_BYTES={l2_bytes()}")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labeller"


def _compiler_name() -> str:
    return os.environ.get("CC") or "cc"


def _compiler() -> str:
    compiler = _compiler_name()
    if shutil.which(compiler) is None:
        raise KernelsUnavailable(
            f"no C compiler {compiler!r} found (install gcc or clang, or set CC)"
        )
    return compiler


def library_path() -> Path:
    """Where the library built from this source, with these flags, for this CPU is cached."""
    compiler = _compiler_name()
    key = hashlib.sha256(
        b"\0".join(
            [SOURCE.read_bytes(), " ".join((compiler, *_flags())).encode(), _cpu_tag().encode()]
        )
    ).hexdigest()[:20]
    return cache_dir() / f"scan-kernels-{key}.so"


@functools.cache
def _library() -> ctypes.CDLL:
    """kernels.c compiled (once per source, flags and CPU) and loaded."""
    built = library_path()
    if not built.exists():
        _build(built)
    try:
        return _loaded(built)
    except (OSError, AttributeError):  # not a library, or not this one (a damaged cache)
        _build(built)  # again, once
        try:
            return _loaded(built)
        except (OSError, AttributeError) as error:
            raise KernelsUnavailable(f"cannot load {built}: {error}") from error


def _loaded(path: Path) -> ctypes.CDLL:
    """The library at `path` with its functions declared. One without them (some other
    library left under this name) is closed again: loaded under the same name, the rebuilt
    one would otherwise be handed the old one."""
    library = ctypes.CDLL(str(path))
    try:
        return _declared(library)
    except AttributeError:
        _ctypes.dlclose(library._handle)
        raise


def _declared(library: ctypes.CDLL) -> ctypes.CDLL:
    """The library's functions given their C signatures."""
    library.scan_layers.argtypes = [ctypes.POINTER(_Layer), _i64, _i64]
    library.scan_layers.restype = ctypes.c_int
    library.block_neurons.argtypes = []
    library.block_neurons.restype = _i64
    return library


def _build(target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename it into place: processes
    building at once (torchrun ranks, test workers) each leave a whole library. With OpenMP
    where the compiler has it (Apple's clang has not: then one thread)."""
    compiler = _compiler()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
    except OSError as error:
        raise KernelsUnavailable(f"cannot write to {target.parent}: {error}") from error
    try:
        for threads in (("-fopenmp",), ()):
            command = [compiler, *_flags(), *threads, "-o", partial, str(SOURCE), "-lm"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                os.replace(partial, target)
                return
        raise KernelsUnavailable(
            f"{compiler} failed to build {SOURCE.name}: {_first_error(done.stderr)}"
        )
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _first_error(output: str) -> str:
    """The compiler's first line that names an error, else its last line: gcc and clang end
    with source excerpts and `compilation terminated.`, which say nothing alone."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next(
        (line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output"
    )


@functools.cache
def build_error() -> str | None:
    """Why the compiled kernels cannot run here (None: they can); tried once per process."""
    try:
        _library()
    except KernelsUnavailable as error:
        return str(error)
    return None


def available() -> bool:
    """The compiled kernels run on CPU tensors once built; LABELLER_TORCH_STATISTICS=1 turns
    them off (the tests compare both paths)."""
    return os.environ.get("LABELLER_TORCH_STATISTICS") != "1" and build_error() is None


def as_array(acts: torch.Tensor) -> tuple[np.ndarray, int]:
    """A [B, T, N] float32 view as a C-contiguous [B, T + skip, N] array and its skip: the
    scan's activations drop the BOS position from the hook's contiguous tensor, and reading
    that tensor in place saves a copy of the batch."""
    batch, width, n = acts.shape
    if acts.is_contiguous():
        return acts.numpy(), 0
    row_stride = acts.stride(0)
    skip, leftover = divmod(row_stride - width * n, n)
    offset = acts.storage_offset() - skip * n
    if acts.stride()[1:] == (n, 1) and leftover == 0 and skip > 0 and offset >= 0:
        parent = torch.as_strided(acts, (batch, width + skip, n), (row_stride, n, 1), offset)
        return parent.numpy(), skip
    return acts.contiguous().numpy(), 0


def _address(tensor: torch.Tensor, dtype: torch.dtype) -> int:
    """Where a tensor the kernels read or write starts; it must be what kernels.c expects."""
    if tensor.dtype != dtype or tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise TypeError(f"the scan kernels take contiguous CPU {dtype}, not {tensor.dtype}")
    return tensor.data_ptr()


def _batch(
    x: np.ndarray,
    skip: int,
    lengths: torch.Tensor,
    window_max: torch.Tensor,
    window_index: torch.Tensor,
    window_hash: torch.Tensor,
) -> _Batch:
    if x.dtype != np.float32 or not x.flags["C_CONTIGUOUS"]:
        raise TypeError("the scan kernels take C-contiguous float32 activations")
    batch, width, n = x.shape
    return _Batch(
        x.ctypes.data,
        batch,
        width,
        n,
        skip,
        _address(lengths, torch.long),
        _address(window_max, torch.float32),
        _address(window_index, torch.long),
        _address(window_hash, torch.long),
    )


def _addresses(owner: object, fields: tuple[tuple[str, torch.dtype], ...]) -> list[int]:
    """The addresses of an accumulator's tensors, in the order its C struct lists them."""
    return [_address(getattr(owner, name), dtype) for name, dtype in fields]


_F32, _I64 = torch.float32, torch.long
_TOP_FIELDS = (("values", _F32), ("argmax", _I64), ("window", _I64), ("hash", _I64), ("acts", _F32))
_BAND_FIELDS = (
    ("exponent", _I64),
    ("priority", _I64),
    ("values", _F32),
    ("argmax", _I64),
    ("window", _I64),
    ("acts", _F32),
)
_MOMENT_FIELDS = tuple(
    (name, torch.float64) for name in ("mean", "m2", "m3", "m4", "positive", "min", "max")
)


def _top(top: TopWindows) -> _Top:
    return _Top(top.k, top.acts.shape[2], *_addresses(top, _TOP_FIELDS))


def _bands(bands: BandSample | None) -> _Bands:
    if bands is None:  # m = 0: kernels.c reads nothing of it
        return _Bands(0, 0, 0, None, None, None, None, None, None)
    return _Bands(
        bands.m, bands.priority.shape[0], bands.acts.shape[2], *_addresses(bands, _BAND_FIELDS)
    )


def _histogram(histogram: AdaptiveHistogram) -> _Histogram:
    return _Histogram(
        histogram.bins,
        _address(histogram.inverse_width, torch.float32),
        _address(histogram.first, torch.long),
        _address(histogram.counts, torch.long),
    )


def _moments(moments: Moments, tokens: float) -> _Moments:
    return _Moments(float(moments.count), tokens, *_addresses(moments, _MOMENT_FIELDS))


@dataclasses.dataclass(frozen=True)
class LayerUpdate:
    """One layer's part of a batch for `update_layers`: `acts` [B, T, N] float32 on CPU (the
    hook's tensor, read in place) and the accumulators it updates; `tops` pairs each
    TopWindows with the batch rows that may enter it (None: every row), e.g. the layer's own
    and each corpus subset's."""

    acts: torch.Tensor
    moments: Moments
    histogram: AdaptiveHistogram
    tops: Sequence[tuple[TopWindows, torch.Tensor | None]]
    bands: BandSample | None


class LayerNotFinite(NonFiniteActivations):
    """NaN or infinity in the activations of `update_layers`'s `position`-th layer."""

    def __init__(self, position: int) -> None:
        super().__init__("NaN or infinite activations")
        self.position = position


def _run(library: ctypes.CDLL, layers: ctypes.Array[_Layer]) -> None:
    status = library.scan_layers(layers, len(layers), torch.get_num_threads())
    if status == NOT_FINITE:
        raise LayerNotFinite(next(i for i, layer in enumerate(layers) if layer.not_finite))
    if status != 0:
        raise MemoryError("the scan kernels ran out of memory")


def update_layers(
    updates: Sequence[LayerUpdate],
    lengths: np.ndarray,
    window_index: torch.Tensor,
    window_hash: torch.Tensor,
    priority: torch.Tensor,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Update the moments, histograms, top windows and band samples of every layer with a
    batch whose windows have `lengths` [B] real tokens, in one call on every core. Returns
    each layer's window maxima [B, N] and the batch rows that some neuron of some layer kept.

    On the first batch the extremes come first, alone: the histograms' ranges are set from
    them (as the torch path sets them) before the one full pass."""
    library = _library()
    block_neurons = library.block_neurons()  # kernels.c's BLOCK, neurons a task
    arrays = [as_array(update.acts) for update in updates]
    batch = len(lengths)
    lengths_t = torch.from_numpy(np.ascontiguousarray(lengths, dtype=np.int64))
    tokens = float(lengths_t.sum())
    every_row = torch.arange(batch)
    widths = [x.shape[2] for x, _ in arrays]
    window_max = [torch.empty((batch, n)) for n in widths]
    low, high = torch.empty(sum(widths)), torch.empty(sum(widths))
    blocks = [(n + block_neurons - 1) // block_neurons for n in widths]
    entered = torch.zeros((sum(blocks), batch), dtype=torch.uint8)
    layers = (_Layer * len(updates))()
    at, block = 0, 0
    kept_alive = []  # what the structs point to, until the calls return
    for i, (update, (x, skip), n, count) in enumerate(
        zip(updates, arrays, widths, blocks, strict=True)
    ):
        rows = [every_row if rows is None else rows.contiguous() for _, rows in update.tops]
        repeated = torch.empty((len(update.tops), batch), dtype=torch.uint8)
        parts = (_TopPart * len(update.tops))(
            *(
                _TopPart(_top(top), _address(r, torch.long), r.numel(), repeated[j].data_ptr())
                for j, ((top, _), r) in enumerate(zip(update.tops, rows, strict=True))
            )
        )
        kept_alive.append((rows, repeated, parts))
        layers[i] = _Layer(
            _batch(x, skip, lengths_t, window_max[i], window_index, window_hash),
            0,
            low.data_ptr() + at * low.element_size(),
            high.data_ptr() + at * high.element_size(),
            _Histogram(),  # set below, once the extremes are known
            _moments(update.moments, tokens),
            parts,
            len(update.tops),
            _bands(update.bands),
            _address(priority, torch.long),
            entered.data_ptr() + block * batch,
            0,
        )
        at, block = at + n, block + count
    if not all(update.histogram.started for update in updates):
        for layer in layers:
            layer.extremes_only = 1
        _run(library, layers)
        at = 0
        for layer, update, n in zip(layers, updates, widths, strict=True):
            if not update.histogram.started:
                update.histogram.cover(low[at : at + n], high[at : at + n])
            layer.extremes_only = 0
            at += n
    for layer, update in zip(layers, updates, strict=True):
        layer.histogram = _histogram(update.histogram)
    _run(library, layers)
    for update in updates:
        update.moments.count += tokens
        update.moments.batches += 1
    return window_max, entered.any(dim=0).nonzero().squeeze(1)

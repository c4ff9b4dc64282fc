"""Evaluation batches: how many images an attack step takes at once, and what happens when
one does not fit. On the CPU a size that keeps feature maps in the caches; on a GPU one sized
from the network's measured activations and the free memory, with an out-of-memory back-off
that gives every result the whole batch would have given. Also evaluation's recorded
precision (the TF32 switches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

CPU_SMALL_BATCH_MIN_SIZE = 32  # image size from which CPU evaluation batches are 64, not 128


EVAL_BATCH_CAP = 1024  # the largest evaluation batch on a GPU
SAFE_FRACTION = 0.6  # of the free device memory, for one attack step's saved activations
_PER_IMAGE: dict[tuple[Any, ...], float] = {}  # saved_bytes_per_image, measured once per key


def saved_bytes_per_image(model: nn.Module, image_size: int, channels: int = 3,
                          device: str | torch.device | None = None) -> float:
    """Bytes of activations one white-box attack step saves for the backward pass, per image:
    measured with `torch.autograd.graph.saved_tensors_hooks` on one forward (eval mode, input
    requiring its gradient, summed cross-entropy) at batches 2 and 4, on `model`'s own device.
    Each saved storage counts once (views and in-place outputs share theirs); the difference of
    the two batches over 2 leaves out what does not grow with the batch (the weights). No
    random draw and no state change (eval mode, no BatchNorm update; the mode is restored)."""
    param = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (
        param.device if param is not None else torch.device("cpu"))
    key = (type(model).__name__, sum(p.numel() for p in model.parameters()), image_size,
           channels, str(dev))
    if key in _PER_IMAGE:
        return _PER_IMAGE[key]
    forward = getattr(model, "_call_impl", model)  # eager even when compiled: no recompiles
    was_training = model.training
    model.eval()
    sizes = []
    try:
        for b in (2, 4):
            seen: dict[int, int] = {}

            def pack(t: Tensor, seen: dict[int, int] = seen) -> Tensor:
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
                return t

            x = torch.rand(b, channels, image_size, image_size, device=dev, requires_grad=True,
                           generator=torch.Generator(dev).manual_seed(0))
            with torch.autocast(dev.type, enabled=False), \
                    torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = forward(x)
                F.cross_entropy(out, torch.zeros(b, dtype=torch.long, device=dev),
                                reduction="sum")
            sizes.append(sum(seen.values()))
            del out, x
    finally:
        model.train(was_training)
    _PER_IMAGE[key] = per = max(sizes[1] - sizes[0], 1) / 2
    return per


def fit_batch(per_image: float, free: float, cap: int = EVAL_BATCH_CAP,
              fraction: float = SAFE_FRACTION) -> int:
    """The largest power of two, at most `cap` (and at least 1), whose saved activations
    (`per_image` bytes each) fit `fraction` of `free` bytes."""
    b = 1
    while b * 2 <= cap and b * 2 * per_image <= fraction * free:
        b *= 2
    return b


def free_memory(device: str | torch.device) -> int:
    """Bytes a new allocation can get on a CUDA device: free on the device plus what torch's
    caching allocator holds unused."""
    d = torch.device(device)
    free, _ = torch.cuda.mem_get_info(d)
    return free + torch.cuda.memory_reserved(d) - torch.cuda.memory_allocated(d)


def eval_batch_sizes(device: str | torch.device, image_size: int,
                     model: nn.Module | None = None, channels: int = 3) -> tuple[int, int]:
    """(white-box attacks and selection, AutoAttack) batch sizes.

    On a GPU, sized from the network, the image size and the free memory: the largest power of
    two, up to 1024, whose saved activations for one attack step (`saved_bytes_per_image`,
    measured once on the device) fit SAFE_FRACTION of the free memory (1024 when no `model` is
    given); `in_batches` still halves a batch that runs out of memory, with the same results.
    (An fp32 PGD step of WRN-34-10 at 64 px saves ~88 GiB at 1024 images: more than an
    H100.) On the CPU, small enough that a batch's feature maps stay in the caches: a PGD step
    of 256 images at 32 px ran at 0.6x the speed of 64 (small_cnn 635 against 952 img/s,
    ResNet-18 125 against 196), and of 256 digits at 8 px at about 0.75x that of 128. There
    the random starts are drawn in the same order whatever the batch, and each image's
    examples come out bit-identical (a test checks it): the choice changes the speed only.
    AutoAttack keeps 500 (64 gained under 10 %, within this machine's noise)."""
    if torch.device(device).type == "cuda":
        if model is None:
            return EVAL_BATCH_CAP, EVAL_BATCH_CAP
        b = fit_batch(saved_bytes_per_image(model, image_size, channels, device),
                      free_memory(device))
        return b, b
    return (64 if image_size >= CPU_SMALL_BATCH_MIN_SIZE else 128), 500


EVAL_PRECISIONS = ("fp32", "tf32", "auto")


@contextmanager
def eval_precision(device: str | torch.device, choice: str = "fp32") -> Iterator[str]:
    """Evaluation's precision, a recorded choice; yields its name for the rows. fp32: strict
    (no TF32 anywhere); tf32: TF32 matmuls and cuDNN convolutions; auto: what the authors'
    code got from PyTorch's defaults, TF32 cuDNN convolutions (`cudnn.allow_tf32` defaults
    True) and fp32 matmuls, recorded as "cudnn-tf32". On the CPU, where TF32 does not exist,
    every choice is fp32. The backend flags are restored on the way out."""
    if choice not in EVAL_PRECISIONS:
        raise ValueError(f"unknown evaluation precision {choice!r} (valid: "
                         f"{', '.join(EVAL_PRECISIONS)})")
    if torch.device(device).type != "cuda":
        yield "fp32"
        return
    matmul, conv = {"fp32": (False, False), "tf32": (True, True), "auto": (False, True)}[choice]
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
    try:
        yield {"fp32": "fp32", "tf32": "tf32", "auto": "cudnn-tf32"}[choice]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error of any device (torch.cuda.OutOfMemoryError is a RuntimeError)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc))


_DRAWS_INPLACE = {torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.bernoulli_,
                  torch.Tensor.random_, torch.Tensor.exponential_}
_DRAWS_LIKE = {torch.rand_like, torch.randn_like, torch.randint_like}


class _SameDraws(TorchFunctionMode):
    """Inside, a random draw shaped like a part of a batch (`part` images, from image
    `offset` of `whole`) is drawn for the whole batch and the part's rows kept: the part gets
    exactly the values the whole batch would have given its images, on every device (CUDA's
    generator, unlike the CPU's, gives two half draws other values than one whole draw)."""

    def __init__(self, whole: int, offset: int, part: int) -> None:
        super().__init__()
        self.whole, self.offset, self.part = whole, offset, part

    def _rows(self, t: Tensor) -> Tensor:
        return t[self.offset:self.offset + self.part]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = args[0] if args else None
        if isinstance(t, Tensor) and t.dim() and t.shape[0] == self.part:
            shape = (self.whole, *t.shape[1:])
            if func in _DRAWS_INPLACE:
                big = t.new_empty(shape)
                func(big, *args[1:], **kwargs)
                with torch.no_grad():
                    t.copy_(self._rows(big))
                return t
            if func in _DRAWS_LIKE:
                return self._rows(func(t.new_empty(shape), *args[1:], **kwargs)).clone()
        return func(*args, **kwargs)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[Tensor, Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def in_batches(fn: Callable[[int, int], list[Tensor]], n: int, batch_size: int,
               device: str | torch.device = "cpu") -> list[list[Tensor]]:
    """`fn(i, j)` (a list of per-image tensors for images i to j-1) over consecutive batches
    of `batch_size`, with an out-of-memory back-off: a batch that runs out of memory is done
    again in halves (and so on), each half from the batch's own random state and drawing
    what the whole batch would have drawn (`_SameDraws`), so every result is the one the whole
    batch gives; the size that fitted is kept for the following batches. Returns, per output
    of `fn`, the list of its parts in order."""
    dev = torch.device(device)
    fits = [batch_size]
    parts: list[list[Tensor]] = []

    def attempt(i: int, j: int, lo: int, hi: int, state: tuple[Tensor, Tensor | None]) -> None:
        if j - i <= fits[0]:
            try:
                if (i, j) == (lo, hi):
                    out = fn(i, j)
                else:
                    with _SameDraws(hi - lo, i - lo, j - i):
                        out = fn(i, j)
                parts.append(out)
                return
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not is_oom(exc) or j - i == 1:
                    raise
            fits[0] = (j - i) // 2
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        step = fits[0]
        for a in range(i, j, step):
            _set_rng_state(dev, state)
            attempt(a, min(a + step, j), lo, hi, state)

    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        attempt(lo, hi, lo, hi, _rng_state(dev))
    return [list(col) for col in zip(*parts, strict=True)] if parts else []

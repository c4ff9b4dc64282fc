"""The evaluation suite, identical for every method (RobustBench-style protocol).

Clean, FGSM (no random start), PGD-20 (uniform start, step eps/4 = 2/255 at 8/255),
PGD-20 with RSLAD's small step (0.003 at 8/255), CW-inf (PGD-30 on the CW margin) and
AutoAttack "standard" through the real `pyautoattack` code. Models run in eval mode.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from bench.eval.attacks import cw_margin, pgd

ALL_ATTACKS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", "aa")
PER_CLASS = ("clean", "pgd20", "aa")  # attacks whose rows also get per-class accuracies
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


@dataclass(frozen=True)
class Threat:
    """The L-inf threat model of an evaluation; steps scale with eps (2/255 and 0.003 at 8/255)."""

    eps: float

    @property
    def step(self) -> float:
        return self.eps / 4

    @property
    def small_step(self) -> float:
        return 0.003 * self.eps / (8 / 255)


def _ce_sum(model: nn.Module, y: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda xa: F.cross_entropy(model(xa), y, reduction="sum")


def adversarial(model: nn.Module, x: Tensor, y: Tensor, attack: str, threat: Threat) -> Tensor:
    """Adversarial examples of one white-box attack of the suite (AutoAttack aside)."""
    e = threat.eps
    if attack == "clean":
        return x
    if attack == "fgsm":
        return pgd(_ce_sum(model, y), x, eps=e, step=e, steps=1, start="none")
    if attack == "pgd10":
        return pgd(_ce_sum(model, y), x, eps=e, step=threat.step, steps=10, start="uniform")
    if attack == "pgd20":
        return pgd(_ce_sum(model, y), x, eps=e, step=threat.step, steps=20, start="uniform")
    if attack == "pgd20s":
        return pgd(_ce_sum(model, y), x, eps=e, step=threat.small_step, steps=20, start="uniform")
    if attack == "cw":
        return pgd(lambda xa: cw_margin(model(xa), y), x, eps=e, step=threat.step, steps=30,
                   start="uniform")
    raise ValueError(f"unknown attack {attack!r}")


def correct(model: nn.Module, x: Tensor, y: Tensor, attack: str, threat: Threat,
            batch_size: int = 256, device: str | torch.device = "cpu") -> Tensor:
    """Per image (on the CPU), whether `model` (eval mode) classifies it right under `attack`."""
    return judged(model, [model], x, y, attack, threat, batch_size, device)[0]


def judged(source: nn.Module, judges: Sequence[nn.Module], x: Tensor, y: Tensor, attack: str,
           threat: Threat, batch_size: int = 256,
           device: str | torch.device = "cpu") -> list[Tensor]:
    """Per image (on the CPU), whether each of `judges` classifies right `attack`'s examples
    crafted against `source` (all in eval mode): one attack, judged by several networks
    (`correct` is `source` judging its own; a transfer matrix, others judging them)."""
    for m in (source, *judges):
        m.eval()

    def batch(i: int, j: int) -> list[Tensor]:
        xb, yb = x[i:j].to(device), y[i:j].to(device)
        xa = adversarial(source, xb, yb, attack, threat)
        with torch.no_grad():
            return [(judge(xa).argmax(1) == yb).cpu() for judge in judges]

    out = in_batches(batch, len(y), batch_size, device)  # an out-of-memory batch is halved
    return [torch.cat(o) for o in out] if out else [torch.zeros(0, dtype=torch.bool)
                                                     for _ in judges]


def accuracy(model: nn.Module, x: Tensor, y: Tensor, attack: str, threat: Threat,
             batch_size: int = 256, device: str | torch.device = "cpu") -> float:
    """Accuracy of `model` (eval mode) on (x, y) under `attack`."""
    hits = correct(model, x, y, attack, threat, batch_size, device)
    return hits.sum().item() / len(hits)


def per_class(ok: Tensor, y: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy per class, in class order, from per-image correctness (None: no image)."""
    y = y.cpu()
    return [int(ok[y == c].sum()) / int((y == c).sum()) if (y == c).any() else None
            for c in range(num_classes)]


def worst_class(ok: Tensor, y: Tensor, num_classes: int | None = None) -> float:
    """The lowest per-class accuracy, over the classes present in `y`."""
    accs = per_class(ok, y, num_classes or int(y.max()) + 1)
    return min(v for v in accs if v is not None)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def autoattack(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, batch_size: int = 500,
               device: str | torch.device = "cpu", state_path: Path | None = None,
               seed: int = 0) -> tuple[float, list[str]]:
    """AutoAttack standard accuracy and its own warning flags (gradient-masking checks)."""
    robust, flags = autoattack_robust(model, x, y, eps, batch_size=batch_size, device=device,
                                      state_path=state_path, seed=seed)
    return robust.float().mean().item(), flags


def autoattack_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float, *,
                      batch_size: int = 500, device: str | torch.device = "cpu",
                      state_path: Path | None = None, seed: int = 0
                      ) -> tuple[Tensor, list[str]]:
    """Per-image AutoAttack robustness (bool, CPU) and AutoAttack's own warning flags.

    `state_path` is pyautoattack's resumable state file. Its own resume path leaves `y_adv`
    unbound (pyautoattack 0.2.0), so an interrupted evaluation is resumed here instead: the
    attacks not yet finished run, with the standard settings, on the images the state still
    marks robust. (pyautoattack records a finished attack at most once a minute, so after a
    kill an attack may run again on the survivors: never an easier evaluation.)
    """
    from pyautoattack import AutoAttack
    from pyautoattack.state import EvaluationState

    model.eval()
    collect = _Collect()
    logger = logging.getLogger("auto-attack")
    logger.addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make = partial(AutoAttack, model, eps=eps, norm="Linf", device=device, seed=seed)
            if state_path is not None and state_path.exists():
                state = EvaluationState.from_disk(state_path)
                robust = state.robust_flags.clone()
                todo = [a for a in make(version="standard").attacks_to_run
                        if a not in state.run_attacks]
                idx = robust.nonzero().flatten()
                if todo and len(idx):
                    rest = make(version="standard")  # standard settings (restarts, targets),
                    rest.attacks_to_run = todo  # only the attacks not finished yet
                    _, y_adv = rest.run_standard_evaluation(
                        x[idx].to(device), y[idx].to(device), batch_size=batch_size)
                    robust[idx] = y_adv.cpu() == y[idx].cpu()
            else:
                _, y_adv = make(version="standard").run_standard_evaluation(
                    x.to(device), y.to(device), batch_size=batch_size, state_path=state_path)
                robust = y_adv.cpu() == y.cpu()
    finally:
        logger.removeHandler(collect)
    flags = collect.messages + [str(w.message) for w in caught
                                if "pyautoattack" in (w.filename or "")]
    return robust.bool(), sorted(set(flags))


def subset(n: int, k: int | None, seed: int = 0) -> Tensor:
    """A fixed, seeded, sorted subset of k indices out of n (all of them when k is None)."""
    if k is None or k >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def evaluate(model: nn.Module, x: Tensor, y: Tensor, threat: Threat, *,
             attacks: tuple[str, ...] = ALL_ATTACKS, aa_samples: int | None = None,
             device: str | torch.device = "cpu", batch_size: int = 256,
             aa_batch_size: int = 500, aa_state: Path | None = None,
             num_classes: int | None = None) -> dict[str, object]:
    """Run the suite; each metric `m` comes with `n_m`, the number of images it was measured
    on, and `attack_seconds[m]`, what it took. Always full precision: autocast is switched off here,
    so a model trained in bf16 is attacked in fp32 (a weaker low-precision attack would
    flatter every method). The per-image outcomes are kept (`outcomes`, see `summarize`).
    """
    ok: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    flags: list[str] | None = None
    aa_index = subset(len(y), aa_samples) if "aa" in attacks else None
    with torch.autocast(torch.device(device).type, enabled=False):
        for a in attacks:
            t0 = time.perf_counter()
            if a == "aa":
                ok[a], flags = autoattack_robust(
                    model, x[aa_index], y[aa_index], threat.eps, batch_size=aa_batch_size,
                    device=device, state_path=aa_state)
            else:
                ok[a] = correct(model, x, y, a, threat, batch_size, device)
            seconds[a] = round(time.perf_counter() - t0, 2)
    out = summarize(ok, y.cpu(), aa_index, num_classes or int(y.max()) + 1)
    out["attack_seconds"] = seconds
    if flags is not None:
        out["aa_flags"] = flags
    return out


def images_fingerprint(x: Tensor, y: Tensor) -> str:
    """16 hex digits of the test images and labels: two rows' per-image outcomes pair up
    only when they were measured on the same images."""
    digest = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(y.cpu().to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


def pack(ok: Tensor) -> str:
    """Per-image booleans as base64 of their bits (an eighth of a byte an image, plus base64's
    third): 1,668 bytes for CIFAR-10's 10,000 test images."""
    return base64.b64encode(np.packbits(ok.cpu().numpy().astype(bool)).tobytes()).decode()


def unpack(text: str, n: int) -> Tensor:
    """The `n` booleans `pack` wrote."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n]
    return torch.from_numpy(bits.astype(bool))


def summarize(ok: dict[str, Tensor], y: Tensor, aa_index: Tensor | None,
              num_classes: int) -> dict[str, Any]:
    """The metrics of per-image outcomes (`ok[attack]`: right or wrong per image; AutoAttack's
    on the images of `aa_index` alone, all of them when None).

    Each attack gives its accuracy and `n_`; those of PER_CLASS also `per_class[a]` and
    `per_class_n[a]` (accuracy and images per class, in class order) and `a_worst`.
    `robust` is RobustBench's robust accuracy: an image counts when it is classified right
    under every attack run, on the images all of them ran on. When AutoAttack ran on a
    subset, every other attack is also given on that subset (`a_on_aa`, `n_on_aa`), so that
    numbers set side by side are measured on the same images. `outcomes` keeps the per-image
    bits (`pack`), with `aa_subset` (the subset's mask over the test set) where there is one.
    """
    out: dict[str, Any] = {}
    by_class, by_class_n = {}, {}
    n = len(y)
    sub = aa_index if aa_index is not None and "aa" in ok and len(aa_index) < n else None
    for a, hits in ok.items():
        labels = y[aa_index] if a == "aa" and aa_index is not None else y
        out[a], out[f"n_{a}"] = hits.sum().item() / len(hits), len(hits)
        if a in PER_CLASS:
            by_class[a] = per_class(hits, labels, num_classes)
            by_class_n[a] = [int((labels == c).sum()) for c in range(num_classes)]
            out[f"{a}_worst"] = min(v for v in by_class[a] if v is not None)
    if by_class:
        out["per_class"], out["per_class_n"] = by_class, by_class_n
    if sub is not None:
        for a, hits in ok.items():
            if a != "aa":
                out[f"{a}_on_aa"] = hits[sub].sum().item() / len(sub)
        out["n_on_aa"] = len(sub)
    if ok:
        every = [hits[sub] if sub is not None and a != "aa" else hits for a, hits in ok.items()]
        worst = torch.stack(every).all(0)
        out["robust"], out["n_robust"] = worst.sum().item() / len(worst), len(worst)
    out["outcomes"] = {a: pack(hits) for a, hits in ok.items()}
    if sub is not None:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[sub] = True
        out["outcomes"]["aa_subset"] = pack(mask)
    return out


def outcomes(metrics: dict[str, Any], n: int) -> tuple[dict[str, Tensor], Tensor | None]:
    """The per-image outcomes a row stores (`n` test images), and AutoAttack's subset."""
    packed = dict(metrics["outcomes"])
    mask = unpack(packed.pop("aa_subset"), n) if "aa_subset" in packed else None
    index = mask.nonzero().flatten() if mask is not None else None
    return {a: unpack(t, int(metrics[f"n_{a}"])) for a, t in packed.items()}, index


def restrict(metrics: dict[str, Any], attacks: tuple[str, ...], y: Tensor,
             num_classes: int) -> dict[str, Any]:
    """`evaluate`'s metrics cut down to `attacks` (those of a twin checkpoint that ran more),
    computed again from its per-image outcomes."""
    ok, index = outcomes(metrics, len(y))
    out = summarize({a: v for a, v in ok.items() if a in attacks}, y.cpu(),
                    index if "aa" in attacks else None, num_classes)
    out["attack_seconds"] = {a: s for a, s in metrics["attack_seconds"].items() if a in attacks}
    if "aa" in attacks and "aa_flags" in metrics:
        out["aa_flags"] = copy.deepcopy(metrics["aa_flags"])
    return out

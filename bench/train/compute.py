"""How a training step is computed: device, precision, memory format, compile, and when
values are read back to the host. One object, shared by the runner, `bench perf` and the GPU
check, so what is measured is what runs.

The math never changes here: a step is the method's attack, its loss, one backward and one
step of every optimizer. What changes is how: bf16 autocast for the attack and the loss
(training only: evaluation attacks run in fp32, or tf32 when chosen, so low precision cannot
flatter a method), channels_last tensors, `torch.compile`, cudnn autotuning, a fused SGD,
and no host-device synchronisation inside a step (the loss is summed on the device and its
finiteness checked there; `Tally.read` is the one sync, once per epoch).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bench.core import distributed
from bench.core.suggest import unknown

PRECISIONS = ("fp32", "tf32", "bf16")
# torch.compile's modes: reduce-overhead replays CUDA graphs (one launch a graph instead of
# hundreds of kernels: the remedy for small batches' launch overhead); max-autotune also
# benchmarks kernel choices at compile time. On the CPU both are the default mode.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# torch.compile costs tens of seconds to minutes (every train/eval mode, every batch shape,
# each network); it pays only over long runs, so "auto" compiles CUDA runs of at least this
# many epochs (30 CIFAR epochs are ~12k steps, an hour or more of fp32 PeerAiD). Never on the
# CPU: on the embedded set compiling alone takes longer than a whole run.
COMPILE_MIN_EPOCHS = 30
# On the CPU channels_last pays from CIFAR's 32 px up (a PGD-AT step: small_cnn 1.13x,
# ResNet-18 1.33x faster here, oneDNN skipping its layout copies); at the embedded set's 8 px
# it gains nothing, so those runs keep NCHW, bit-identical to the reference loop.
CPU_CHANNELS_LAST_MIN_SIZE = 32


def default_precision(device: str | torch.device) -> str:
    """bf16 autocast for training on CUDA, fp32 on the CPU (bf16 there is emulated: slower)."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


@functools.cache
def keep_freed_memory() -> bool:
    """On glibc, serve every allocation from the heap and never trim it, so freed memory is
    reused instead of handed back to the kernel and faulted in again (zeroed) next step.

    glibc gives allocations over its mmap threshold (128 KB, rising to 32 MB at most) their
    own pages and unmaps them when freed: every step's feature maps were fresh pages. A CPU
    PGD-AT step of ResNet-18 at 32 px, batch 128, took 2.2 million page faults and 11.0 s,
    against 1 and 8.1 s here (small_cnn: 157-185 ms against 144-148). The numbers computed
    are the same bits; the process keeps its peak memory. Process-wide, once, for CPU runs;
    `BENCH_MALLOC=system` leaves malloc as it is. True when applied."""
    if os.environ.get("BENCH_MALLOC") == "system" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameters (malloc.h)
    done = [libc.mallopt(m_mmap_max, 0), libc.mallopt(m_trim_threshold, 2**31 - 1)]
    return all(done)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise unknown("precision", precision, PRECISIONS)
    return precision


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise unknown("compile mode", mode, COMPILE_MODES)
    return mode


def _fp32_output(module: nn.Module, args: object, out: Tensor) -> Tensor:
    return out.float()


class CompiledCall:
    """A network's compiled call (`nn.Module._compiled_call_impl`, which `Module.compile` sets
    and `Module.__getstate__` drops: a deep copy is the plain network): the module's own call,
    its hooks run eagerly, around its forward compiled from a copy of the forward's code object.

    Dynamo keeps its graphs (and counts them against `recompile_limit`, 8) per code object:
    compiled in place, a student, its peer and a teacher of the same class shared the 8 slots
    of `forward`, and the ninth graph ran eagerly ever after. Here each network has its own.
    Its inputs come in the training memory format (evaluation's NCHW tensors would add their
    own graphs) with the batch dimension dynamic from the first call (the last partial batch
    and evaluation's batch sizes reuse the graph); each network then holds one graph per mode
    it runs in: train or eval, grad or not, input grad (an attack) or not."""

    def __init__(self, model: nn.Module, memory_format: torch.memory_format,
                 mode: str = "default") -> None:
        f = type(model).forward
        own = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__,
                                 f.__defaults__, f.__closure__)
        own.__kwdefaults__, own.__qualname__ = f.__kwdefaults__, f.__qualname__
        self.model, self.memory_format, self.code = model, memory_format, own.__code__
        for watch in _WATCHING:
            watch.append(self)
        self.forward = torch.compile(types.MethodType(own, model),
                                     mode=None if mode == "default" else mode)

    def _input(self, x: object) -> object:
        if not isinstance(x, Tensor):
            return x
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        if x.dim() >= 1 and x.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return x

    def __call__(self, *args: object, **kwargs: object) -> object:
        model = self.model
        model.__dict__["forward"] = self.forward  # what `_call_impl` calls, for this call only
        try:
            return model._call_impl(*(self._input(a) for a in args), **kwargs)
        finally:
            del model.__dict__["forward"]


_WATCHING: list[list[CompiledCall]] = []  # the open `counting_graphs` blocks' networks


def graphs_of(call: CompiledCall) -> int:
    """The graphs dynamo holds for this network's own forward (its cache entries)."""
    return len(torch._dynamo.eval_frame._debug_get_cache_entry_list(call.code))


@contextlib.contextmanager
def counting_graphs() -> Iterator[list[CompiledCall]]:
    """Within the block, every network compiled (`Compute.prepare`) is followed: the list
    yielded holds their compiled calls (kept alive to the block's end), for `graphs_of`
    against torch._dynamo.config.recompile_limit (the GPU check reports both)."""
    made: list[CompiledCall] = []
    _WATCHING.append(made)
    try:
        yield made
    finally:
        _WATCHING.remove(made)


@contextlib.contextmanager
def attack_frozen(nets: Iterable[nn.Module]) -> Iterator[None]:
    """While a method crafts its examples: every forward of `nets` with grad enabled and an
    input that requires grad (an attack's step) runs with the network's parameters frozen
    (requires_grad False), restored right after that forward.

    The attack differentiates with respect to its input only. Eager autograd computes just
    that; a compiled backward graph computes the gradient of every input that requires grad,
    the weights' too (convolution_backward's output mask [True, True, False], not [True,
    False, False]): a PGD step cost three forward-equivalents, not two. Frozen per forward,
    not for the whole attack: a forward on the clean batch with grad (CIARD's S(x), which its
    loss reuses) keeps its parameters' gradients. The values are the same bits either way."""
    thawed: dict[int, list[Tensor]] = {}

    def freeze(module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad
                                           for a in args):
            params = [p for p in module.parameters() if p.requires_grad]
            thawed.setdefault(id(module), []).extend(params)
            for p in params:
                p.requires_grad_(False)

    def thaw(module: nn.Module, args: tuple, out: object) -> None:
        for p in thawed.pop(id(module), []):
            p.requires_grad_(True)

    handles = []
    try:
        for net in nets:
            handles += [net.register_forward_pre_hook(freeze),
                        net.register_forward_hook(thaw, always_call=True)]
        yield
    finally:
        for h in handles:
            h.remove()
        for params in thawed.values():
            for p in params:
                p.requires_grad_(True)


@dataclass(frozen=True)
class Compute:
    """How the runner computes a training step on one device (never what it computes)."""

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # COMPILE_MODES; reduce-overhead: CUDA graphs
    read_every: int = 0  # also read the loss back every N steps (0: at epoch end only)

    @classmethod
    def for_run(cls, device: str, precision: str | None = None, *,
                channels_last: bool | None = None, compile: bool | None = None,
                epochs: int = 0, image_size: int = 0, read_every: int = 0,
                compile_mode: str = "default") -> Compute:
        """The defaults per device: on CUDA bf16, channels_last, and compile for runs of at
        least COMPILE_MIN_EPOCHS epochs; on the CPU fp32, no compile, and channels_last for
        images of CPU_CHANNELS_LAST_MIN_SIZE px and more (smaller ones: NCHW, bit-identical
        to the reference loop). None means the default."""
        dev = torch.device(device).type
        cuda = dev == "cuda"
        auto_cl = cuda or (dev == "cpu" and image_size >= CPU_CHANNELS_LAST_MIN_SIZE)
        return cls(device=device,
                   precision=check_precision(precision or default_precision(device)),
                   channels_last=auto_cl if channels_last is None else channels_last,
                   compile=(cuda and epochs >= COMPILE_MIN_EPOCHS) if compile is None else compile,
                   compile_mode=check_compile_mode(compile_mode), read_every=read_every)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def setup(self) -> None:
        """Process-wide kernel choices: cudnn autotuning; TF32 matmuls and convolutions only
        for precision tf32 (torch lets cudnn use TF32 by default: fp32 here means fp32); on
        the CPU, freed memory kept for reuse (`keep_freed_memory`)."""
        if torch.device(self.device).type == "cpu":
            keep_freed_memory()
        if torch.device(self.device).type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = self.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = self.precision == "tf32"

    def prepare(self, model: nn.Module | None) -> nn.Module | None:
        """Move `model` to the device in the memory format; under bf16 its outputs (logits)
        come back as fp32, so every softmax, KL and cross-entropy of a method's math runs in
        fp32 on every device (CUDA's autocast does that for those ops, the CPU's does not);
        compile it in place (state_dict keys stay the plain module's: same checkpoints)."""
        if model is None:
            return None
        model = model.to(self.device, memory_format=self.memory_format)
        if self.precision == "bf16":
            model.register_forward_hook(_fp32_output)
        if self.compile:  # as `model.compile()` does, each network with its own graphs
            model._compiled_call_impl = CompiledCall(model, self.memory_format,
                                                     self.compile_mode)
        return model

    def input(self, x: Tensor) -> Tensor:
        """A batch on the device in the memory format (images only: 4-D tensors)."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training step's autocast region (a no-op for fp32 and tf32)."""
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def optimizer(self, params: Iterable[Tensor], lr: float, momentum: float,
                  weight_decay: float) -> torch.optim.SGD:
        """SGD as the authors use it; fused into one kernel on CUDA."""
        fused = True if torch.device(self.device).type == "cuda" else None
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               fused=fused)

    def step(self, method, optims: Iterable[torch.optim.Optimizer], x: Tensor, y: Tensor,
             loss_fn: Callable[..., Tensor] | None = None,
             teacher_optim: torch.optim.Optimizer | None = None,
             teacher_weight: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """One batch: attack, loss, zero_grad, backward, every optimizer's step; then a trained
        teacher's own objective and step (`teacher_optim`; `teacher_weight` is this rank's
        share under torchrun, its gradients averaged as DDP would), then `after_step()`.
        Returns the losses (student, teacher or None) as detached device tensors: nothing
        here waits for the device, so a non-finite loss is found by `Tally.read`."""
        optims = list(optims)
        if self.compile and self.compile_mode == "reduce-overhead":
            # a new step: the CUDA graphs may overwrite the last step's outputs (all read)
            torch.compiler.cudagraph_mark_step_begin()
        with self.autocast():
            with attack_frozen(method.networks().values()):
                x_adv = method.attack(x, y)
            loss = (loss_fn or method.loss)(x, x_adv, y)
        for o in optims:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in optims:
            o.step()
        t_loss = None
        if teacher_optim is not None:
            with self.autocast():
                t_loss = method.teacher_loss(x, x_adv, y)
            if t_loss is not None:
                teacher_optim.zero_grad(set_to_none=True)
                (t_loss * teacher_weight).backward()
                distributed.average_grads(method.teacher)
                teacher_optim.step()
                t_loss = t_loss.detach()
        method.after_step()
        return loss.detach(), t_loss


class NonFiniteLoss(Exception):
    """A step's loss (or its trained teacher's) was not finite; `step` is 0-based."""

    def __init__(self, value: float, step: int, teacher: bool = False) -> None:
        super().__init__(f"loss is {value} at step {step}")
        self.value, self.step, self.teacher = value, step, teacher


class Tally:
    """An epoch's loss sum and its first non-finite step, kept on the device: `read` is the
    only host-device synchronisation, and raises NonFiniteLoss for a bad epoch."""

    def __init__(self, device: str | torch.device) -> None:
        dev = torch.device(device)
        wide = torch.float32 if dev.type == "mps" else torch.float64
        self.total = torch.zeros((), dtype=wide, device=dev)
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=dev)
        self.bad_value = torch.zeros((), device=dev)
        self.bad_teacher = torch.zeros((), dtype=torch.bool, device=dev)
        self.n = 0

    def add(self, loss: Tensor, n: int, step: int, teacher_loss: Tensor | None = None) -> None:
        """Add a batch's mean loss over `n` images; remember the first non-finite loss (the
        student's, else its trained teacher's)."""
        for value, is_teacher in ((loss, False), (teacher_loss, True)):
            if value is None:
                continue
            value = value.float()
            first = (self.bad_step < 0) & ~torch.isfinite(value)
            self.bad_step = torch.where(first, step, self.bad_step)
            self.bad_value = torch.where(first, value, self.bad_value)
            self.bad_teacher = self.bad_teacher | (first & is_teacher)
        self.total = self.total + loss.to(self.total.dtype) * n
        self.n += n

    def read(self) -> float:
        """The mean loss so far (one sync), or NonFiniteLoss if any step's loss was bad."""
        bad, value, total, teacher = (t.item() for t in (
            self.bad_step, self.bad_value, self.total, self.bad_teacher))
        if bad >= 0:
            raise NonFiniteLoss(value, bad, teacher)
        return total / max(self.n, 1)

"""Teachers' weights: a checkpoint file or a RobustBench model, loaded into a network.

Files are read with `torch.load(weights_only=True)` only; a teacher of the wrong architecture
or class count is a one-line error, never a silent partial load. Training a teacher the
harness caches is the pipeline's job: this module only loads weights.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from bench import BenchError
from bench.core import files
from bench.core.suggest import unknown
from bench.train import checkpoint

ZOO = "robustbench:"
# Per-channel statistics a teacher may normalise with INSIDE its forward (methods.md, RSLAD:
# the CIFAR-100 DeepMind teacher normalises with CIFAR-10's mean/std).
NORMALIZATIONS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class Normalized(nn.Module):
    """A model that normalises its [0, 1] input itself, so attacks still work in pixel space."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def _state_dict_of(obj: object, path: Path, what: str) -> dict[str, Tensor]:
    """The tensors of a bench checkpoint, a plain state dict, or a {"state_dict": ...} wrapper."""
    if isinstance(obj, dict) and obj.get("format") == checkpoint.FORMAT:
        obj = obj["models"]["student"]
    elif isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor)
                                                       for v in obj.values()):
        raise BenchError(f"{what} {path} holds no state dict of tensors")
    # DataParallel / DDP prefixes; WRN checkpoints of the TRADES lineage carry an unused block.
    return {k.removeprefix("module."): v for k, v in obj.items()
            if not k.removeprefix("module.").startswith("sub_block1.")}


def load_weights(model: nn.Module, path: Path, what: str) -> nn.Module:
    """Load a weights file into `model` strictly, with a one-line error on any mismatch; a
    damaged file's says what to do (bench cannot remake a file it was given)."""
    try:
        obj = files.load_file(path)
    except files.Unreadable as exc:
        raise BenchError(f"{what} {exc}; replace it with an intact copy") from None
    state = _state_dict_of(obj, path, what)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise BenchError(f"{what} {path} does not fit the architecture: {detail}"[:300]) from None
    return model


def robustbench_model(name: str, dataset: str, model_dir: Path) -> nn.Module:
    """A RobustBench L-inf model by name (its own normalisation included), in eval mode.

    Needs the optional `robustbench` extra; weights are cached under `model_dir`, so a model
    placed there by hand loads offline.
    """
    import pyautoattack

    # robustbench 1.1.1 declares `pyautoattack` but imports it under its git name.
    sys.modules.setdefault("autoattack", pyautoattack)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from robustbench.model_zoo import model_dicts
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
            from robustbench.utils import load_model
    except ImportError as exc:
        raise BenchError(f"RobustBench teachers need the optional extra: pip install "
                         f"'advdistill-bench[robustbench]' ({exc})") from None
    try:
        zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel.Linf]
    except ValueError:
        raise BenchError(f"RobustBench has no {dataset} models") from None
    if name not in zoo:
        raise unknown(f"RobustBench {dataset} Linf model", name, zoo)
    try:
        return load_model(name, model_dir=model_dir, dataset=dataset, threat_model="Linf").eval()
    except Exception as exc:  # offline download, corrupt file: one line that says where
        target = model_dir / dataset / "Linf" / f"{name}.pt"
        fix = (f"{target} may be damaged: delete it to download it again, or put an intact "
               "copy there" if target.exists() else f"put its checkpoint at {target}")
        raise BenchError(f"could not load RobustBench model {name} ({type(exc).__name__}); "
                         f"{fix}") from None


def renormalized(model: nn.Module, norm: str, name: str) -> nn.Module:
    """A RobustBench `model` whose OWN input normalisation is replaced by `norm`'s statistics
    (RSLAD wraps RobustBench's CIFAR-100 WRN-70-16 weights with CIFAR-10's). A model without
    one of its own is refused: RobustBench models take [0, 1] pixels, and normalising on top
    of an unseen normalisation would be silently wrong."""
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    if not (isinstance(mean, Tensor) and isinstance(std, Tensor)):
        raise BenchError(f"--teacher-normalize {norm}: RobustBench model {name} has no input "
                         f"normalisation of its own (mean/std) to override")
    with torch.no_grad():
        mean.copy_(torch.tensor(NORMALIZATIONS[norm][0]).view_as(mean))
        std.copy_(torch.tensor(NORMALIZATIONS[norm][1]).view_as(std))
    return model


def normalized(model: nn.Module, norm: str | None) -> nn.Module:
    """`model` normalising its input with the `norm` data set's statistics (None: as is)."""
    return Normalized(model, *NORMALIZATIONS[norm]) if norm else model

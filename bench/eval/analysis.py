"""Measurements on models, not training: tutor accuracy, transfer matrices, attack strength.

They reuse the evaluation suite's attacks (bench.eval.evaluate), models in eval mode, and every
measurement draws its random starts from its own seeded generator state, so measuring never
changes a training run's trajectory and the same models give the same numbers. What they
measure goes next to the run (`<out>/runs/<cell>/strength.json`, the epoch history) or under
`<out>/analyses/`, where `bench plot` and the report read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench import BenchError
from bench.core.distiller import parse_number
from bench.core.files import atomic_write_bytes
from bench.eval.batching import eval_batch_sizes
from bench.eval.evaluate import Threat, accuracy, adversarial, judged

TUTOR_ATTACK = "pgd10"  # the selection yardstick, at the data set's threat model
TRANSFER_ATTACKS = ("pgd10", "pgd20", "fgsm")


@contextmanager
def measuring(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block on torch's RNG seeded with `seed` (the caller's state restored after)
    and in full precision, as the evaluation suite attacks (autocast off)."""
    d = torch.device(device)
    with torch.random.fork_rng(devices=[d.index or 0] if d.type == "cuda" else []), \
            torch.autocast(d.type, enabled=False):
        torch.manual_seed(seed)
        yield


def _batch(device: str | torch.device, x: Tensor, *models: nn.Module) -> int:
    """The evaluation suite's white-box batch size for images like `x` (on CUDA, one that
    fits the largest of `models`)."""
    return min([eval_batch_sizes(device, x.shape[-1], m, x.shape[1])[0] for m in models]
               or [eval_batch_sizes(device, x.shape[-1])[0]])


def transfer(source: nn.Module, targets: Sequence[nn.Module], x: Tensor, y: Tensor,
             attack: str, threat: Threat, batch_size: int = 256,
             device: str | torch.device = "cpu") -> list[float]:
    """Accuracy of each target on `attack`'s examples crafted against `source` (all in eval
    mode). With `targets == [source]` this is `evaluate.accuracy`, draw for draw."""
    return [h.sum().item() / len(y)
            for h in judged(source, targets, x, y, attack, threat, batch_size, device)]


# --- tutor accuracy during training -------------------------------------------------------

def tutors(method: Any) -> dict[str, nn.Module]:
    """The networks a method learns from, by the key prefix they are logged under: the peer
    (PeerAiD) or else the robust teacher is `tutor`; a non-robust teacher `clean_teacher`."""
    out = {}
    tutor = method.peer if getattr(method, "peer", None) is not None else method.teacher
    if tutor is not None:
        out["tutor"] = tutor
    if getattr(method, "clean_teacher", None) is not None:
        out["clean_teacher"] = method.clean_teacher
    return out


def tutor_on_student(student: nn.Module, tutor: nn.Module, x: Tensor, y: Tensor,
                     threat: Threat, *, seed: int, batch_size: int,
                     device: str | torch.device = "cpu") -> float:
    """The tutor's accuracy on PGD-10 examples crafted against the student, from `seed`."""
    with measuring(seed, device):
        return transfer(student, [tutor], x, y, TUTOR_ATTACK, threat, batch_size, device)[0]


def tutor_alone(tutor: nn.Module, x: Tensor, y: Tensor, threat: Threat, *, seed: int,
                batch_size: int, device: str | torch.device = "cpu") -> dict[str, float]:
    """The tutor's clean accuracy and its accuracy under its own PGD-10, from `seed`."""
    with measuring(seed, device):
        return {"on_self": accuracy(tutor, x, y, TUTOR_ATTACK, threat, batch_size, device),
                "clean": accuracy(tutor, x, y, "clean", threat, batch_size, device)}


def _fingerprint(net: nn.Module) -> Tensor:
    """One number per weight and buffer: equal fingerprints, unchanged network."""
    return torch.stack([t.detach().double().sum() for t in net.state_dict().values()])


class TutorLog:
    """The runner's call at selection epochs: PeerAiD's question for each of a method's
    tutors. How accurate is it on clean images (`<prefix>_clean`), on PGD-10 examples crafted
    against the current student (`_on_student`) and against itself (`_on_self`)?

    Every attack starts from the cell's seed, so the numbers are a function of the networks;
    a tutor unchanged since the last call (a fixed teacher) is not attacked again, its own
    numbers being the same: on a large teacher that attack would cost more than an epoch.
    """

    def __init__(self, method: Any, x: Tensor, y: Tensor, threat: Threat, seed: int,
                 batch_size: int, device: str | torch.device) -> None:
        self.method, self.x, self.y, self.threat = method, x, y, threat
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self._alone: dict[str, tuple[Tensor, dict[str, float]]] = {}

    def __call__(self, on_student: dict[str, float] | None = None) -> dict[str, float]:
        """`on_student`: the tutors' accuracies on the student's examples where the caller
        has them (the selection's own PGD-10, drawn from the same seed: the same numbers)."""
        out: dict[str, float] = {}
        known = on_student or {}
        kw = dict(seed=self.seed, batch_size=self.batch_size, device=self.device)
        for prefix, net in tutors(self.method).items():
            out[f"{prefix}_on_student"] = known[prefix] if prefix in known else (
                tutor_on_student(self.method.student, net, self.x, self.y, self.threat, **kw))
            fp = _fingerprint(net)
            cached = self._alone.get(prefix)
            if cached is None or not torch.equal(cached[0], fp):
                cached = self._alone[prefix] = (fp, tutor_alone(net, self.x, self.y,
                                                                self.threat, **kw))
            out.update({f"{prefix}_{k}": v for k, v in cached[1].items()})
        return out


TUTOR_KEYS = tuple(f"{p}_{k}" for p in ("tutor", "clean_teacher")
                   for k in ("clean", "on_student", "on_self"))


def final_tutor(history: list[dict[str, Any]]) -> dict[str, float]:
    """The last measured tutor accuracies of a run (for its result rows)."""
    for h in reversed(history):
        found = {k: h[k] for k in TUTOR_KEYS if k in h}
        if found:
            return found
    return {}


# --- transfer matrices --------------------------------------------------------------------

def transfer_matrix(models: dict[str, tuple[nn.Module, int]], x: Tensor, y: Tensor,
                    attack: str, threat: Threat, *, batch_size: int | None = None,
                    device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Rows {source, target, attack, accuracy, n}: every model attacked (as the source) and
    every model evaluated on those examples. `models` maps a name to (network, seed): the
    source's attack draws from its run's seed, as the evaluation suite does, so the diagonal
    is the model's stored white-box accuracy."""
    if attack not in TRANSFER_ATTACKS:
        raise BenchError(f"unknown attack {attack!r} (valid: {', '.join(TRANSFER_ATTACKS)})")
    nets = {k: m.to(device) for k, (m, _) in models.items()}
    batch_size = batch_size or _batch(device, x, *nets.values())
    rows = []
    for src, (net, seed) in models.items():
        with measuring(seed, device):
            accs = transfer(net, list(nets.values()), x, y, attack, threat, batch_size, device)
        rows += [{"source": src, "target": tgt, "attack": attack, "accuracy": a, "n": len(y)}
                 for tgt, a in zip(nets, accs, strict=True)]
    return rows


def save_transfer(out: Path, rows: list[dict[str, Any]], eps: float,
                  labels: dict[str, str]) -> Path:
    """Store a matrix under `<out>/analyses/` (named by its models and attack), with a short
    display label per model."""
    names = list(dict.fromkeys(r["source"] for r in rows))
    key = hashlib.sha256(json.dumps([names, rows[0]["attack"], eps]).encode()).hexdigest()[:10]
    path = Path(out) / "analyses" / f"transfer-{rows[0]['attack']}-{key}.json"
    atomic_write_bytes(path, json.dumps({"eps": eps, "labels": labels, "rows": rows},
                                              indent=1).encode())
    return path


# --- attack-strength curves ---------------------------------------------------------------

def parse_eps(text: str) -> list[float]:
    """'0,0.05,8/255' -> radii in [0, 1]; one clear line for anything else."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        try:
            value = parse_number(part)
        except ValueError:
            raise BenchError(f"--eps takes comma-separated numbers or k/255 fractions, got "
                             f"{part!r}") from None
        if not 0 <= value <= 1:
            raise BenchError(f"--eps values must be in [0, 1] (pixels in [0, 1]), got {part!r}")
        out.append(value)
    if not out:
        raise BenchError(f"--eps names no radius: {text!r}")
    return sorted(set(out))


def parse_steps(text: str) -> list[int]:
    try:
        out = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise BenchError(f"--steps takes comma-separated integers, got {text!r}") from None
    if not out or out[0] < 1:
        raise BenchError(f"--steps must be integers >= 1, got {text!r}")
    return out


def _pgd_k(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int) -> Tensor:
    """The suite's PGD (uniform start, step eps/4) with `steps` iterations."""
    import torch.nn.functional as F

    from bench.eval.attacks import pgd

    return pgd(lambda xa: F.cross_entropy(model(xa), y, reduction="sum"), x, eps=eps,
               step=Threat(eps).step, steps=steps, start="uniform")


def strength(model: nn.Module, x: Tensor, y: Tensor, eps_list: Sequence[float],
             steps_list: Sequence[int], *, seed: int, batch_size: int | None = None,
             device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Points {eps, steps, attack, accuracy, n}: PGD-k (uniform start, step eps/4) at every
    (eps, k) and FGSM at every eps, each from `seed`. At eps 0 every attack is the identity,
    so the curves start at the clean accuracy."""
    model.eval().to(device)
    batch_size = batch_size or _batch(device, x, model)
    points = []
    for eps in eps_list:
        for attack, steps in [("fgsm", 1), *(("pgd", k) for k in steps_list)]:
            correct = 0
            with measuring(seed, device):
                for i in range(0, len(y), batch_size):
                    xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                    xa = (adversarial(model, xb, yb, "fgsm", Threat(eps)) if attack == "fgsm"
                          else _pgd_k(model, xb, yb, eps, steps))
                    with torch.no_grad():
                        correct += int((model(xa).argmax(1) == yb).sum())
            points.append({"eps": eps, "steps": steps, "attack": attack,
                           "accuracy": correct / len(y), "n": len(y)})
    return points


def masking_signs(points: list[dict[str, Any]], aa_flags: Sequence[str] = ()) -> list[str]:
    """The classic signs of gradient masking in a model's strength curves, one line each."""
    signs = []
    pgd = [p for p in points if p["attack"] == "pgd" and p["eps"] > 0]
    n = max((p["n"] for p in points), default=1)
    one = 1 / n + 1e-12  # one image
    by_eps: dict[float, list[dict[str, Any]]] = {}
    for p in pgd:
        by_eps.setdefault(p["eps"], []).append(p)
    for eps, ps in sorted(by_eps.items()):
        ps.sort(key=lambda p: p["steps"])
        lo, hi = ps[0], ps[-1]
        if lo["steps"] <= 2 and hi["steps"] >= 10 and hi["accuracy"] >= lo["accuracy"] - one:
            signs.append(f"eps {eps:.4g}: PGD-{hi['steps']} is no stronger than PGD-"
                         f"{lo['steps']} ({100 * hi['accuracy']:.1f} % vs "
                         f"{100 * lo['accuracy']:.1f} %): more steps should find more "
                         f"examples")
        fgsm = next((p for p in points if p["attack"] == "fgsm" and p["eps"] == eps), None)
        if fgsm is not None and fgsm["accuracy"] < hi["accuracy"] - one:
            signs.append(f"eps {eps:.4g}: FGSM beats PGD-{hi['steps']} "
                         f"({100 * fgsm['accuracy']:.1f} % vs {100 * hi['accuracy']:.1f} %): "
                         f"the iterative attack follows misleading gradients")
    big = [p for p in pgd if p["eps"] >= 0.5]
    if big and min(p["accuracy"] for p in big) > 0.1:
        signs.append(f"at eps >= 0.5 PGD still leaves {100 * min(p['accuracy'] for p in big):.1f}"
                     f" % accuracy: an attack that cannot win unbounded hides a gradient problem")
    signs += [f"AutoAttack flagged: {f}" for f in aa_flags]
    return signs


def save_strength(run_dir: Path, checkpoint: str, points: list[dict[str, Any]],
                  aa_flags: Sequence[str] = ()) -> tuple[Path, list[str]]:
    """Merge `points` of `checkpoint` into `<run>/strength.json` (a point measured again
    replaces the old one); returns the file and the masking signs of all its points."""
    path = run_dir / "strength.json"
    stored = load_strength(run_dir)
    key = ("eps", "steps", "attack")
    new = {tuple(p[k] for k in key) for p in points}
    keep = [p for p in stored.get("points", []) if p.get("checkpoint") != checkpoint
            or tuple(p.get(k) for k in key) not in new]
    merged = keep + [{**p, "checkpoint": checkpoint} for p in points]
    merged.sort(key=lambda p: (p["checkpoint"], p["attack"], p["steps"], p["eps"]))
    signs = masking_signs([p for p in merged if p["checkpoint"] == checkpoint], aa_flags)
    signs_by = {**stored.get("signs", {}), checkpoint: signs}
    atomic_write_bytes(path, json.dumps({"points": merged, "signs": signs_by},
                                        indent=1).encode())
    return path, signs


def load_strength(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "strength.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}

"""The runner: trains one resolved cell, checkpointing every epoch, resuming exactly.

It owns loops, devices, optimizers, LR schedules, SWA, model selection, checkpoints and
logging; a method only supplies `attack` and `loss`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from bench import BenchError, analysis, checkpoint, data, distributed, registry, selection
from bench.cells import Resolved
from bench.distiller import Distiller
from bench.evaluate import Threat, accuracy, correct
from bench.models import create_model
from bench.swa import recompute_bn
from bench.teachers import load_weights

SELECT_BATCH = 512


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what): never part of a cell's identity."""

    out: Path = Path("results")
    device: str = "cpu"
    data_root: Path | None = None
    num_workers: int = 0
    detect_anomaly: bool = False
    log: Any = print  # a callable taking one line (the CLI passes rich's console.print)
    progress: Any = None  # optional callable(label, done, total), called after every batch


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def build(r: Resolved, name: str, arch: str) -> nn.Module:
    """A fresh network of `arch` shaped for the cell's data set."""
    s = r.spec
    return create_model(arch, num_classes=s.num_classes, in_channels=s.channels,
                        image_size=s.image_size)


def train_step(method: Distiller, optims: Iterable[torch.optim.Optimizer], x: torch.Tensor,
               y: torch.Tensor, loss_fn: Callable[..., torch.Tensor] | None = None) -> float:
    """One batch for any method: attack, loss, zero_grad, backward, step of every optimizer.

    `loss_fn` replaces `method.loss` (the DDP-wrapped loss under torchrun).
    Raises FloatingPointError (before any weight changes) when the loss is not finite.
    """
    x_adv = method.attack(x, y)
    loss = (loss_fn or method.loss)(x, x_adv, y)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(str(value))
    for o in optims:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in optims:
        o.step()
    return value


class Trainer:
    """One cell's training state: networks, optimizers, schedule, SWA, selection, RNG."""

    def __init__(self, r: Resolved, opts: RunOptions, teacher: nn.Module | None) -> None:
        self.r, self.opts, self.p = r, opts, r.params
        self.dir = opts.out / "runs" / r.id
        self.device = torch.device(opts.device)
        _seed_all(r.cell.seed)
        student = build(r, "student", r.arch)
        peer = build(r, "peer", r.config["peer_arch"]) if r.cls.needs_peer else None
        if teacher is not None:
            teacher = teacher.to(self.device)
        self.method = registry.create(
            r.cell.method, student=student.to(self.device), teacher=teacher,
            peer=peer.to(self.device) if peer is not None else None, dataset=r.cell.dataset,
            preset=r.cell.preset, arch=r.arch, budget=r.spec.budget, **dict(r.cell.overrides))
        self.nets = {"student": self.method.student}
        if peer is not None:
            self.nets["peer"] = self.method.peer
        self.optims = {k: torch.optim.SGD(m.parameters(), lr=self.p.lr, momentum=self.p.momentum,
                                          weight_decay=self.p.weight_decay)
                       for k, m in self.nets.items()}
        self.ddp = distributed.wrap(self.method, self.device)
        self.swa = AveragedModel(self.method.student) if self.p.swa else None
        self.epoch = 0
        self.best = {"best": -1.0, "swa_best": -1.0}
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0

    # -- data --------------------------------------------------------------------------
    def _data(self) -> None:
        c, root = self.r.cell, self.opts.data_root
        holdout = c.select == "val"
        self.train_set = data.load(c.dataset, "train", root=root, augment=True, holdout=holdout)
        sel = data.load(c.dataset, c.select, root=root)
        self.sel_x, self.sel_y = data.as_tensors(sel)
        self.tutor_log = analysis.TutorLog(self.method, self.sel_x, self.sel_y,
                                           Threat(self.r.spec.eps), c.seed, SELECT_BATCH,
                                           self.device)

    def _batches(self, epoch: int, shuffle: bool = True):
        """Global batches in an order fixed by (seed, epoch): the same on every rank."""
        g = torch.Generator().manual_seed(self.r.cell.seed * 1_000_003 + epoch)
        for x, y in data.batches(self.train_set, self.p.batch_size, shuffle=shuffle, generator=g,
                                 num_workers=self.opts.num_workers):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    # -- checkpoints -------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.dir / "ckpt.pt"

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "id": self.r.id,
            "models": {k: m.state_dict() for k, m in self.nets.items()},
            "optims": {k: o.state_dict() for k, o in self.optims.items()},
            "swa": self.swa.state_dict() if self.swa is not None else None,
            "best": dict(self.best), "history": list(self.history),
            "train_seconds": self.train_seconds, "rng": checkpoint.rng_state(),
        }

    def _restore(self, s: dict[str, Any]) -> None:
        if s.get("id") != self.r.id:
            raise BenchError(f"checkpoint {self.ckpt_path} belongs to another cell")
        for k, m in self.nets.items():
            m.load_state_dict(s["models"][k])
        for k, o in self.optims.items():
            o.load_state_dict(s["optims"][k])
        if self.swa is not None and s["swa"] is not None:
            self.swa.load_state_dict(s["swa"])
        self.epoch, self.best = s["epoch"], dict(s["best"])
        self.history, self.train_seconds = list(s["history"]), s["train_seconds"]
        checkpoint.set_rng_state(s["rng"])

    def _save_model(self, name: str, model: nn.Module) -> None:
        if distributed.is_main():
            checkpoint.save_weights(self.dir / f"{name}.pt", model, id=self.r.id,
                                    epoch=self.epoch)

    # -- training ----------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> float:
        lr = self.p.lr_at(epoch)
        for o in self.optims.values():
            for g in o.param_groups:
                g["lr"] = lr
        self.method.epoch = epoch
        total, n = 0.0, 0
        per_epoch = -(-len(self.train_set) // self.p.batch_size)
        for i, batch in enumerate(self._batches(epoch)):
            x, y, weight = distributed.shard(*batch)
            loss_fn = partial(self.ddp, weight=weight) if self.ddp is not None else None
            try:
                loss = train_step(self.method, self.optims.values(), x, y, loss_fn)
            except FloatingPointError as exc:
                raise BenchError(f"loss is {exc} at epoch {epoch + 1} batch {i + 1} "
                                 f"(1-based, as logged): stopped; last good checkpoint kept "
                                 f"at {self.ckpt_path}") from None
            total, n = total + loss * len(y), n + len(y)
            if self.opts.progress is not None:
                self.opts.progress(f"{self.r.cell.method} seed {self.r.cell.seed}",
                                   epoch * per_epoch + i + 1, self.p.epochs * per_epoch)
        return total / max(n, 1)

    def _select(self, epoch: int, log: dict[str, Any]) -> None:
        """Evaluate the student (and the SWA model) as the preset's selection rule says, on the
        selection split at the data set's threat model (the same yardstick for every method,
        whatever radius it trains at), and keep the best networks the rule reports."""
        rule = selection.rule(self.p.selection)
        if not rule.due(epoch, self.p.epochs, self.r.cell.select_every):
            return
        threat = Threat(self.r.spec.eps)
        nets = {"": self.method.student}
        if self.swa is not None and self.swa.n_averaged.item() > 0:
            nets["swa_"] = self.swa.module
        for prefix, net in nets.items():
            hits = correct(net, self.sel_x, self.sel_y, rule.attack, threat, SELECT_BATCH,
                           self.device)
            log[prefix + rule.attack] = hits.sum().item() / len(hits)
            if rule.score == "acc+worst":
                log[prefix + "worst_class"] = selection.worst_class(hits, self.sel_y)
            self._keep(rule, prefix + "best", selection.score(rule, hits, self.sel_y), net)
        if rule.best_clean:
            log["clean"] = accuracy(self.method.student, self.sel_x, self.sel_y, "clean", threat,
                                    SELECT_BATCH, self.device)
            self._keep(rule, "best_clean", log["clean"], self.method.student)
        log.update(self.tutor_log())  # the tutor on the student's examples and on its own

    def _keep(self, rule: selection.Rule, name: str, score: float, net: nn.Module) -> None:
        """Save `net` as checkpoint `name` if the rule reports it and `score` is a new best."""
        reported = name in rule.keep or (name == "best_clean" and rule.best_clean)
        if reported and score > self.best.get(name, -1.0):
            self.best[name] = score
            self._save_model(name, net)

    def _after_epoch(self, epoch: int, loss: float, seconds: float) -> None:
        p = self.p
        log: dict[str, Any] = {"epoch": epoch, "lr": p.lr_at(epoch), "loss": loss}
        if self.swa is not None and epoch >= (p.milestones[0] if p.milestones else 0):
            self.swa.update_parameters(self.method.student)
            recompute_bn(self.swa, self._batches(epoch, shuffle=False), p.swa_bn or "image")
        self._select(epoch, log)
        log["seconds"] = round(seconds, 3)
        self.history.append(log)

    def train(self) -> dict[str, nn.Module]:
        """Train (or resume) to the last epoch; return the checkpoints to evaluate by name."""
        self._data()
        if distributed.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(
                json.dumps(self.r.config, indent=1, default=str))
        state = checkpoint.load_latest(self.ckpt_path)
        if state is not None:
            self._restore(state)
            if self.epoch < self.p.epochs:
                self.opts.log(f"  resuming {self.r.id} at epoch {self.epoch}")
        with torch.autograd.set_detect_anomaly(self.opts.detect_anomaly):
            while self.epoch < self.p.epochs:
                t0 = time.perf_counter()
                loss = self._train_epoch(self.epoch)
                seconds = time.perf_counter() - t0
                self.train_seconds += seconds
                self._after_epoch(self.epoch, loss, seconds)
                self.epoch += 1
                if distributed.is_main():
                    checkpoint.save(self.ckpt_path, self._state())
                    self._log_epoch(self.history[-1])
        distributed.barrier()  # rank 0's best.pt files are on disk before anyone loads them
        return self.finals()

    def _log_epoch(self, h: dict[str, Any]) -> None:
        sel = "  ".join(f"{k} {h[k]:.3f}" for k in ("pgd10", "swa_pgd10", "tutor_on_student",
                                                    "tutor_on_self") if k in h)
        self.opts.log(f"  [{self.r.cell.method}] epoch {h['epoch'] + 1}/{self.p.epochs}  "
                      f"lr {h['lr']:.4g}  loss {h['loss']:.4f}  {sel}  {h['seconds']:.1f}s")

    def finals(self) -> dict[str, nn.Module]:
        """The networks the selection rule reports (`last` always; the common protocol: best,
        and swa_last, swa_best where SWA runs), each loaded on the device."""
        rule = selection.rule(self.p.selection)
        out: dict[str, nn.Module] = {"last": self.method.student}
        swa = self.swa is not None and self.swa.n_averaged.item() > 0
        for name in (*rule.keep, *(["best_clean"] if rule.best_clean else [])):
            if name == "swa_last" and swa:
                out[name] = self.swa.module
            elif name in ("best", "best_clean") or (name == "swa_best" and swa):
                out[name] = self._load(name)
        return out

    def _load(self, name: str) -> nn.Module:
        model = copy.deepcopy(self.method.student)
        return load_weights(model, self.dir / f"{name}.pt", f"{name} checkpoint").to(self.device)

"""The runner: trains one resolved cell, checkpointing every epoch, resuming exactly.

It owns loops, devices, optimizers, LR schedules, SWA, model selection, checkpoints and
logging; a method supplies `attack` and `loss` (and, if it has them, its state, hooks and a
trained teacher's `teacher_loss`: see `bench.core.distiller.Distiller`).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from bench import BenchError
from bench.core import distributed, registry
from bench.data import datasets, devicedata
from bench.eval import analysis
from bench.eval.batching import eval_batch_sizes, eval_precision
from bench.eval.evaluate import Threat, accuracy, judged, worst_class
from bench.models import create_model
from bench.train import checkpoint, selection
from bench.train.cells import Resolved
from bench.train.compute import Compute, NonFiniteLoss, Tally, attack_frozen
from bench.train.swa import recompute_bn
from bench.train.teachers import load_weights


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what): never part of a cell's identity."""

    out: Path = Path("results")
    device: str = "cpu"
    data_root: Path | None = None
    num_workers: int = 0
    detect_anomaly: bool = False
    log: Any = print  # a callable taking one line (the CLI passes rich's console.print)
    progress: Any = None  # optional callable(label, done, total, loss or None), every batch
    data_path: str = "device"  # "device": decoded once, augmented on the device; "torchvision"
    channels_last: bool | None = None  # None: the device's default (bench.train.compute)
    compile: bool | None = None  # None: compile long CUDA runs only (bench.train.compute)
    compile_mode: str = "default"  # torch.compile's mode (reduce-overhead: CUDA graphs)
    read_every: int = 0  # also read the loss back every N steps (0: once per epoch)
    keep_stale: bool = False  # reuse stored cells whose method's code has changed since
    eval_precision: str = "auto"  # selection's attacks too (bench.eval.batching.eval_precision)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def build(r: Resolved, name: str, arch: str) -> nn.Module:
    """A fresh network of `arch` shaped for the cell's data set."""
    s = r.spec
    return create_model(arch, num_classes=s.num_classes, in_channels=s.channels,
                        image_size=s.image_size)


def compute_for(r: Resolved, opts: RunOptions) -> Compute:
    """How this cell's steps are computed: its precision, the run's kernel choices."""
    return Compute.for_run(opts.device, r.cell.precision, channels_last=opts.channels_last,
                           compile=opts.compile, epochs=r.params.epochs,
                           image_size=r.spec.image_size, read_every=opts.read_every,
                           compile_mode=opts.compile_mode)


class Trainer:
    """One cell's training state: networks, optimizers, schedule, SWA, selection, RNG."""

    def __init__(self, r: Resolved, opts: RunOptions, teacher: nn.Module | None,
                 clean_teacher: nn.Module | None = None) -> None:
        self.r, self.opts, self.p = r, opts, r.params
        self.dir = opts.out / "runs" / r.id
        self.device = torch.device(opts.device)
        self.compute = c = compute_for(r, opts)
        c.setup()
        _seed_all(r.cell.seed)
        student = build(r, "student", r.arch)
        peer = build(r, "peer", r.config["peer_arch"]) if r.cls.needs_peer else None
        self.method = registry.create(
            r.cell.method, student=c.prepare(student), teacher=c.prepare(teacher),
            peer=c.prepare(peer), clean_teacher=c.prepare(clean_teacher),
            dataset=r.cell.dataset, preset=r.cell.preset, arch=r.arch, budget=r.spec.budget,
            **dict(r.cell.overrides))
        self.nets = self.method.networks()
        self.optims = {k: self._sgd(k, m) for k, m in self.nets.items()}
        self.ddp = distributed.wrap(self.method, self.device)
        self.swa = AveragedModel(self.method.student) if self.p.swa else None
        self.epoch = 0
        self.best = {"best": -1.0, "swa_best": -1.0}
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.timing: list[dict[str, Any]] = []  # per epoch: wall and selection seconds

    def _sgd(self, name: str, net: nn.Module) -> torch.optim.SGD:
        """One SGD per network: the student's settings, or a trained teacher's own."""
        p, c = self.p, self.compute
        if name == "teacher":
            return c.optimizer(net.parameters(), p.teacher_lr, p.teacher_momentum,
                               p.teacher_weight_decay)
        return c.optimizer(net.parameters(), p.lr, p.momentum, p.weight_decay)

    def _set_lr(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        """Every optimizer's LR for this batch, from its schedule (a function of epoch, step)."""
        for name, o in self.optims.items():
            at = self.p.teacher_lr_at if name == "teacher" else self.p.lr_at
            lr = at(epoch, step, steps_per_epoch)
            for g in o.param_groups:
                g["lr"] = lr

    # -- data --------------------------------------------------------------------------
    def _data(self) -> None:
        c, root = self.r.cell, self.opts.data_root
        holdout = c.select == "val"
        if self.opts.data_path == "device":
            self.train_set = devicedata.load(c.dataset, "train", root, self.device, augment=True,
                                             holdout=holdout)
            x, y = devicedata.tensors(c.dataset, c.select, root)
            self.sel_x, self.sel_y = devicedata.to_float(x.to(self.device)), y.to(self.device)
        else:
            self.train_set = datasets.load(c.dataset, "train", root=root, augment=True,
                                           holdout=holdout)
            self.sel_x, self.sel_y = datasets.as_tensors(
                datasets.load(c.dataset, c.select, root=root))
        # the evaluation suite's batch: one size for the selection and the tutor log, whose
        # PGD-10 must draw the same random starts for the selection's to stand in for it
        # (on CUDA sized from the student and the free memory; a batch too large is halved
        # with the same draws, `batching.in_batches`)
        self.sel_batch = eval_batch_sizes(self.device, self.r.spec.image_size,
                                          self.method.student, self.r.spec.channels)[0]
        self.tutor_log = analysis.TutorLog(self.method, self.sel_x, self.sel_y,
                                           Threat(self.r.spec.eps), c.seed, self.sel_batch,
                                           self.device)

    def _batches(self, epoch: int, shuffle: bool = True):
        """Global batches in an order fixed by (seed, epoch): the same on every rank."""
        g = torch.Generator().manual_seed(self.r.cell.seed * 1_000_003 + epoch)
        if isinstance(self.train_set, devicedata.DeviceData):
            batches = self.train_set.batches(self.p.batch_size, shuffle=shuffle, generator=g)
        else:
            batches = datasets.batches(self.train_set, self.p.batch_size, shuffle=shuffle,
                                   generator=g, num_workers=self.opts.num_workers)
        for x, y in batches:
            yield self.compute.input(x), y.to(self.device, non_blocking=True)

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
            "method": self.method.state_dict(),
            "best": dict(self.best), "history": list(self.history),
            "timing": list(self.timing),  # per epoch: wall_seconds, selection_seconds
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
        self.method.load_state_dict(s.get("method", {}))
        self.epoch, self.best = s["epoch"], dict(s["best"])
        self.history, self.train_seconds = list(s["history"]), s["train_seconds"]
        self.timing = list(s.get("timing", []))
        checkpoint.set_rng_state(s["rng"])

    def _save_model(self, name: str, model: nn.Module) -> None:
        if distributed.is_main():
            checkpoint.save_weights(self.dir / f"{name}.pt", model, id=self.r.id,
                                    epoch=self.epoch)

    # -- training ----------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> float:
        self.method.epoch = epoch
        tally = Tally(self.device)  # no host-device sync inside the epoch: read at its end
        per_epoch = -(-len(self.train_set) // self.p.batch_size)
        others = [o for k, o in self.optims.items() if k != "teacher"]
        try:
            for i, batch in enumerate(self._batches(epoch)):
                self.method.step = i
                self._set_lr(epoch, i, per_epoch)
                x, y, weight = distributed.shard(*batch)
                self.method.shard_weight = weight
                loss_fn = partial(self.ddp, weight=weight) if self.ddp is not None else None
                loss, t_loss = self.compute.step(self.method, others, x, y, loss_fn,
                                                 self.optims.get("teacher"), weight)
                tally.add(loss, len(y), i, t_loss)
                every = self.compute.read_every  # a sync every N steps: the bar shows the loss
                so_far = tally.read() if every and (i + 1) % every == 0 else None
                if self.opts.progress is not None:
                    self.opts.progress(f"{self.r.cell.method} seed {self.r.cell.seed}",
                                       epoch * per_epoch + i + 1, self.p.epochs * per_epoch,
                                       so_far)
            loss = tally.read()
        except NonFiniteLoss as exc:  # the epoch is discarded: its checkpoint is never written
            raise BenchError(f"loss is {exc.value}{' (teacher)' if exc.teacher else ''} at epoch "
                             f"{epoch + 1} batch {exc.step + 1} (1-based, as logged): stopped; "
                             f"{self._kept()}") from None
        self.method.on_epoch_end(distributed.all_reduce_sums(self.method.pop_sums()))
        return loss

    def _kept(self) -> str:
        """Where the last good epoch is, for the non-finite loss stop: named only if a file
        holds one (a first epoch that fails leaves none)."""
        found = checkpoint.find(self.ckpt_path)
        if found.state is None:
            return "no epoch finished, so no checkpoint was kept"
        return f"last good checkpoint kept at {found.file} (epoch {found.state['epoch']})"

    def _select(self, epoch: int, log: dict[str, Any]) -> None:
        """Evaluate the student (and the SWA model) as the preset's selection rule says, on the
        selection split at the data set's threat model (the same yardstick for every method,
        whatever radius it trains at), and keep the best networks the rule reports."""
        rule = selection.rule(self.p.selection)
        if not rule.due(epoch, self.p.epochs, self.r.cell.select_every):
            return
        threat = Threat(self.r.spec.eps)
        nets = {"": self.method.student}
        if self._swa_averaged(epoch + 1):
            nets["swa_"] = self.swa.module
        if "teacher_best" in rule.keep and "teacher" in self.nets:  # a teacher that trains
            nets["teacher_"] = self.nets["teacher"]
        # The student's examples are judged by its tutors too (PeerAiD's question) when the
        # rule attacks as the tutor log does, instead of being crafted twice.
        tutors = analysis.tutors(self.method) if rule.attack == analysis.TUTOR_ATTACK else {}
        on_student: dict[str, float] = {}
        for prefix, net in nets.items():
            judges = [net, *(tutors.values() if not prefix else ())]
            # seeded per network and epoch-independent, on its own RNG state: selecting is a
            # function of the network, and never moves the training run's random draws
            with analysis.measuring(self.r.cell.seed, self.device):
                hits, *others = judged(net, judges, self.sel_x, self.sel_y, rule.attack,
                                       threat, self.sel_batch, self.device)
            if not prefix:
                on_student = {k: h.sum().item() / len(h)
                              for k, h in zip(tutors, others, strict=True)}
            log[prefix + rule.attack] = hits.sum().item() / len(hits)
            clean = None
            if rule.score == "clean+adv" or (rule.best_clean and not prefix):
                clean = accuracy(net, self.sel_x, self.sel_y, "clean", threat, self.sel_batch,
                                 self.device)
                log[prefix + "clean"] = clean
            if rule.score == "acc+worst":
                log[prefix + "worst_class"] = worst_class(hits, self.sel_y)
            self._keep(rule, prefix + "best", selection.score(rule, hits, self.sel_y, clean), net)
            if rule.best_clean and not prefix:
                self._keep(rule, "best_clean", clean, net)
        log.update(self.tutor_log(on_student))  # the tutor on the student's and on its own

    def _keep(self, rule: selection.Rule, name: str, score: float, net: nn.Module) -> None:
        """Save `net` as checkpoint `name` if the rule reports it and `score` is a new best."""
        reported = name in rule.keep or (name == "best_clean" and rule.best_clean)
        if reported and score > self.best.get(name, -1.0):
            self.best[name] = score
            self._save_model(name, net)

    def _after_epoch(self, epoch: int, loss: float, seconds: float) -> None:
        p = self.p
        log: dict[str, Any] = {"epoch": epoch, "lr": p.lr_at(epoch), "loss": loss}
        if "teacher" in self.optims:
            log["teacher_lr"] = p.teacher_lr_at(epoch)
        if self.swa is not None and epoch >= self._swa_start():
            self.swa.update_parameters(self.method.student)
            recompute_bn(self.swa, self._batches(epoch, shuffle=False), p.swa_bn or "image")
        t0 = time.perf_counter()
        self._select(epoch, log)
        log["seconds"] = round(seconds, 3)  # training steps alone
        # the epoch's timings beside its log (the log itself is the same on every rerun):
        # selection with the tutor log, and (set in `train`) the epoch's wall time
        self.timing.append({"epoch": epoch,
                            "selection_seconds": round(time.perf_counter() - t0, 3)})
        self.history.append(log)

    def train(self) -> dict[str, nn.Module]:
        """Train (or resume) to the last epoch; return the checkpoints to evaluate by name."""
        self._data()
        if distributed.is_main():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(
                json.dumps(self.r.config, indent=1, default=str))
        found = checkpoint.find(self.ckpt_path)
        note = checkpoint.damage_note(found, self.r.id)
        if note is not None:
            self.opts.log(note)  # says where it resumes: no second line
        if found.state is not None:
            self._restore(found.state)
            if self.epoch < self.p.epochs and note is None:
                self.opts.log(f"  resuming {self.r.id} at epoch {self.epoch}")
        with torch.autograd.set_detect_anomaly(self.opts.detect_anomaly):
            while self.epoch < self.p.epochs:
                t0 = time.perf_counter()
                loss = self._train_epoch(self.epoch)
                seconds = time.perf_counter() - t0
                self.train_seconds += seconds
                # selection attacks: weights frozen as in training, at evaluation's precision
                with self._frozen(), eval_precision(self.device, self.opts.eval_precision):
                    self._after_epoch(self.epoch, loss, seconds)
                # the epoch's wall time: training, SWA's BN update and selection (not the save)
                self.timing[-1]["wall_seconds"] = round(time.perf_counter() - t0, 3)
                self.epoch += 1
                if distributed.is_main():
                    checkpoint.save(self.ckpt_path, self._state())
                    self._log_epoch({**self.history[-1], **self.timing[-1]})
        distributed.barrier()  # rank 0's best.pt files are on disk before anyone loads them
        return self.finals()

    def _swa_start(self) -> int:
        """The first 0-based epoch averaged: swa_start, else the first LR milestone."""
        p = self.p
        return p.swa_start if p.swa_start is not None else (p.milestones[0] if p.milestones else 0)

    def _swa_averaged(self, epochs_done: int) -> bool:
        """Whether the SWA model holds an average after `epochs_done` epochs: known on the
        host from the schedule, not read back from its device-side `n_averaged`."""
        return self.swa is not None and epochs_done > self._swa_start()

    def _frozen(self):
        """Every network's attack forwards with its weights frozen (`attack_frozen`): the same
        numbers, no weight gradients in a compiled backward, the training attack's graphs."""
        nets = [*self.nets.values(), *analysis.tutors(self.method).values()]
        if self.swa is not None:
            nets.append(self.swa.module)
        return attack_frozen({id(n): n for n in nets}.values())

    def _log_epoch(self, h: dict[str, Any]) -> None:
        sel = "  ".join(f"{k} {h[k]:.3f}" for k in ("clean", "pgd10", "pgd20s", "swa_pgd10",
                                                    "tutor_on_student", "tutor_on_self")
                        if k in h)
        self.opts.log(f"  [{self.r.cell.method}] epoch {h['epoch'] + 1}/{self.p.epochs}  "
                      f"lr {h['lr']:.4g}  loss {h['loss']:.4f}  {sel}  {h['seconds']:.1f}s"
                      + (f" (wall {h['wall_seconds']:.1f}s, selection "
                         f"{h['selection_seconds']:.1f}s)" if "wall_seconds" in h else ""))

    def finals(self) -> dict[str, nn.Module]:
        """The networks the selection rule reports (`last` always; the common protocol: best,
        and swa_last, swa_best where SWA runs), each loaded on the device."""
        rule = selection.rule(self.p.selection)
        out: dict[str, nn.Module] = {"last": self.method.student}
        swa = self._swa_averaged(self.epoch)
        for name in (*rule.keep, *(["best_clean"] if rule.best_clean else [])):
            if name == "swa_last" and swa:
                out[name] = self.swa.module
            elif name in ("best", "best_clean") or (name == "swa_best" and swa):
                out[name] = self._load(name)
        return out

    def _load(self, name: str) -> nn.Module:
        model = copy.deepcopy(self.method.student)
        return load_weights(model, self.dir / f"{name}.pt", f"{name} checkpoint").to(self.device)

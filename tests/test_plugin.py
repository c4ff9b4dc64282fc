"""A method from a separate package, found through the `bench.methods` entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
"""Clean-logit-pairing toy method: lives in its own package, registered by entry point."""

import torch.nn.functional as F

from bench.eval.attacks import pgd
from bench.core.distiller import Distiller


class MixAT(Distiller):
    """MixAT (test plugin): CE on half clean, half PGD examples."""

    def attack(self, x, y):
        s = self.student.eval()
        return pgd(lambda xa: F.cross_entropy(s(xa), y), x, eps=self.p.eps, step=self.p.step,
                   steps=self.p.steps, start="uniform")

    def loss(self, x, x_adv, y):
        s = self.student.train()
        return 0.5 * F.cross_entropy(s(x), y) + 0.5 * F.cross_entropy(s(x_adv), y)
'''


def _build_plugin(tmp: Path) -> Path:
    """Write the plugin project and pip-install it into its own target folder."""
    src = tmp / "mixat-plugin"
    (src / "mixat_plugin").mkdir(parents=True)
    (src / "mixat_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (src / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "mixat-plugin"
        version = "0.0.1"

        [project.entry-points."bench.methods"]
        mixat = "mixat_plugin:MixAT"
        """))
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(src)],
                   check=True, capture_output=True, timeout=300)
    return site


def test_plugin_is_listed_and_runs(tmp_path: Path) -> None:
    site = _build_plugin(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    bench = [sys.executable, "-m", "bench.cli"]
    listed = subprocess.run([*bench, "list"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "mixat" in listed.stdout and "MixAT (test plugin)" in listed.stdout
    out = tmp_path / "results"
    run = subprocess.run([*bench, "run", "--methods", "mixat", "--epochs", "2", "--attacks",
                          "clean,pgd20", "--out", str(out)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = list((out / "rows").glob("mixat-*--last.json"))
    assert len(rows) == 1
    assert "| mixat |" in run.stdout

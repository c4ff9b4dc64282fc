"""Published numbers (bench/report/reported.toml) and how a reproduction compares with them.

The published figures are data of their own, never mixed with measured rows: each carries
its grade (GRADES: how close the evidence behind it is to the paper), the artifact or third
party it was read from, a pinned source, and its metric as the source states it (attack,
steps, step size). A figure is set beside a reproduced column only when that column measures
the same thing (SUITE) in the same setting; every other figure of a reproduced setting is
listed as not comparable, with the reason. pandas is imported inside the functions
(training needs torch only).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import BenchError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

if TYPE_CHECKING:
    import pandas as pd

DATA = Path(__file__).with_name("reported.toml")
GRADES = {"R": "read: the paper's own table or figure, read from the paper (arXiv version "
               "pinned)",
          "P": "primary: the authors' own artifact (their repository, poster or a "
               "maintainer's reply), pinned; not the paper's table",
          "S": "secondary: a third party's copy (the third party named), unchecked against "
               "the paper",
          "T": "tertiary: third-party notes transcribing the paper in text, unchecked, "
               "without a public address"}
GRADES_NOTE = ("Grades, by the evidence behind each published figure: " + "; ".join(
    f"{g} = {text}" for g, text in GRADES.items()) + ". A figure is set beside a reproduced "
    "column only when its attack, steps and step size are the ones bench measured (and its "
    "eps, data set, student, teacher and checkpoint); the others are listed as not "
    "comparable, with the reason.")
# bench's suite (bench/eval/evaluate.py) at eps 8/255 in the data file's terms: (attack,
# steps, step size); clean and AutoAttack have neither.
SUITE = {"clean": ("clean", None, None), "fgsm": ("fgsm", 1, "8/255"),
         "pgd20": ("pgd", 20, "2/255"), "pgd20s": ("pgd", 20, "0.003"),
         "cw": ("cw_inf", 30, "2/255"), "aa": ("autoattack", None, None),
         # the opt-in threat models: L2 at RobustBench's CIFAR-10 radius 0.5 (step eps_l2/4)
         # and the common corruptions' mean (no published figure uses them yet)
         "pgd20_l2": ("pgd_l2", 20, "0.125"), "aa_l2": ("autoattack_l2", None, None),
         "corruptions": ("common_corruptions", None, None)}
EPS = "8/255"
FIELDS = ("paper", "table", "method", "published_as", "dataset", "arch", "teacher",
          "teacher_key", "checkpoint", "metric", "about", "attack", "steps", "step", "eps",
          "column", "unlike", "value", "grade", "evidence", "source", "pin", "note",
          "figure_note", "margin")


def _fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def likeness(attack: str, steps: int | None, step: str | None, on: str = "") -> tuple[str, str]:
    """(the bench column that measures a published metric alike, "") or ("", why none does).

    Alike means the same attack with the same steps and step size, run on the evaluated
    model itself; an unstated step count or size matches nothing."""
    if on:
        return "", f"not a white-box number of the evaluated model: {on}"
    if attack == "unspecified":
        return "", "the source names no attack"
    same = [(c, n, s) for c, (a, n, s) in SUITE.items() if a == attack]
    if not same:
        return "", f"no bench column measures {attack}"
    for col, n, s in same:
        if (n, s) == (steps, step):
            return col, ""
    col, n, s = next((c for c in same if c[1] == steps), same[0])
    why = ["steps not stated" if steps is None else f"{steps} steps" if steps != n else "",
           "step size not stated" if step is None else f"step {step}" if step != s else ""]
    return "", f"{', '.join(w for w in why if w)}; bench's {col} is {n} steps of {s}"


@cache
def figures(path: Path = DATA) -> tuple[dict[str, Any], ...]:
    """Every published figure, one dict per number (FIELDS), in the file's order: `note`
    is its row's, `figure_note` its own (a disagreement between sources, say)."""
    try:
        doc = tomllib.loads(path.read_text())
        rows, metrics = doc["row"], doc["metric"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise BenchError(f"published numbers {path} unreadable ({exc})") from None
    out = []
    for i, r in enumerate(rows, 1):
        if r.get("grade") not in GRADES or not r.get("pin") or not r.get("evidence"):
            raise BenchError(f"{path}, row {i}: needs a grade ({', '.join(GRADES)}), "
                             "evidence and a pin")
        for metric, value in r["values"].items():
            spec = metrics.get(metric)
            if spec is None or not isinstance(value, int | float):
                raise BenchError(f"{path}, row {i}: {metric} needs a number and a [metric] "
                                 "entry")
            column, unlike = likeness(spec["attack"], spec.get("steps"), spec.get("step"),
                                      spec.get("on", ""))
            out.append({"paper": r["paper"], "table": r["table"], "method": r["method"],
                        "published_as": r["published_as"], "dataset": r["dataset"],
                        "arch": r["arch"], "teacher": r.get("teacher", "unverified"),
                        "teacher_key": r.get("teacher_key", ""),
                        "checkpoint": r.get("checkpoint", "unverified"), "metric": metric,
                        "about": spec.get("about", ""), "attack": spec["attack"],
                        "steps": spec.get("steps"), "step": spec.get("step"),
                        "eps": r.get("eps", EPS), "column": column,
                        "unlike": unlike, "value": float(value), "grade": r["grade"],
                        "evidence": r["evidence"], "source": r["source"], "pin": r["pin"],
                        "note": r.get("note", ""),
                        "figure_note": r.get("notes", {}).get(metric, ""),
                        "margin": r.get("margins", {}).get(metric)})
    return tuple(out)


def frame() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(figures()), columns=list(FIELDS))


def graded(value: float, grade: str) -> str:
    """A published number as every view must show it: with its grade, never bare."""
    return f"{value:.2f} ({grade})"


def evidence(fig: dict[str, Any] | pd.Series) -> str:
    """The grade beside what it rests on, e.g. 'S: LISArD's README (...)'."""
    return f"{fig['grade']}: {fig['evidence']}"


def _note(fig: dict[str, Any]) -> str:
    return "; ".join(n for n in (fig["note"], fig["figure_note"]) if n)


def teacher_key(config: Any) -> str:
    """A stored row's teacher in the data file's terms: method:arch of a trained teacher,
    robustbench:NAME, file:<digest>, `peer` (PeerAiD), or `none`."""
    if not isinstance(config, dict):
        return ""
    t = config.get("teacher")
    if not t:
        return "peer" if config.get("peer_arch") else "none"
    if ":" in t:
        return t
    parts = t.split("-")  # <method>-<preset>-<dataset>-<arch>-s<seed>-<hash>
    return f"{parts[0]}:{parts[3]}" if len(parts) >= 6 else t


def _unlike(fig: dict[str, Any], line: pd.Series) -> str:
    """Why a figure of the line's method, data set and student is not comparable with the
    line, every reason joined by ' | ' ("" when it is): metric, eps, teacher where published,
    checkpoint (an unstated one is compared with `best`), a measured number."""
    why = [fig["unlike"]]
    eps = line.get("eps")
    if eps is None or eps != eps or abs(float(eps) - _fraction(fig["eps"])) > 1e-9:
        why.append(f"eps: published {fig['eps']}, reproduced {eps}")
    if fig["teacher_key"] and fig["teacher_key"] != line["teacher_key"]:
        why.append(f"teacher: published {fig['teacher_key']}, reproduced "
                   f"{line['teacher_key']}")
    ck = fig["checkpoint"]
    if not (ck == line["checkpoint"] or (ck == "unverified" and line["checkpoint"] == "best")):
        why.append(f"checkpoint: published {ck}, reproduced {line['checkpoint']}")
    col = fig["column"]
    if col and (col not in line or line[col] != line[col]):
        why.append(f"bench has no {col} number for this setting")
    return " | ".join(w for w in why if w)


def _pairs(rows: pd.DataFrame) -> list[tuple[pd.Series, int, str]]:
    """(reproduced table line, index into figures(), why not comparable or "") for every
    figure of a reproduced method, data set and student."""
    from bench.report.aggregate import GROUP, aggregate, prepare

    rows = prepare(rows)
    if rows.empty:
        return []
    rows = rows.assign(teacher_key=rows["config"].map(teacher_key) if "config" in rows
                       else "")
    agg = aggregate(rows, [*GROUP, "teacher_key"])
    return [(line, i, _unlike(fig, line)) for _, line in agg.iterrows()
            for i, fig in enumerate(figures())
            if (fig["method"], fig["dataset"], fig["arch"]) == (line["method"],
                                                                line["dataset"], line["arch"])]


def compare(rows: pd.DataFrame) -> pd.DataFrame:
    """Reproduced mean ± std beside every published figure measured alike (`_unlike`).

    One line per (reproduced table line, published figure): `metric` is the bench column,
    `published_metric` the source's label, the difference reproduced − published in points,
    and `flag` when it exceeds max(1 pp, 2 std over seeds).
    """
    import pandas as pd

    cols = ["dataset", "arch", "method", "label", "checkpoint", "metric", "reproduced",
            "std", "seeds", "published", "grade", "evidence", "difference", "flag", "paper",
            "table", "published_as", "published_metric", "teacher", "reproduced_teacher",
            "published_checkpoint", "source", "pin", "note"]
    out = []
    for line, i, why in _pairs(rows):
        if why:
            continue
        fig = figures()[i]
        col = fig["column"]
        mean, std = line[col], line[f"{col}_std"]
        diff = mean - fig["value"]
        tol = max(1.0, 2 * std) if std == std else 1.0
        out.append({"dataset": line["dataset"], "arch": line["arch"], "method": line["method"],
                    "label": line["label"], "checkpoint": line["checkpoint"], "metric": col,
                    "reproduced": mean, "std": std, "seeds": line[f"{col}_count"],
                    "published": fig["value"], "grade": fig["grade"],
                    "evidence": fig["evidence"], "difference": diff, "flag": abs(diff) > tol,
                    "paper": fig["paper"], "table": fig["table"],
                    "published_as": fig["published_as"], "published_metric": fig["metric"],
                    "teacher": fig["teacher"], "reproduced_teacher": line["teacher_key"],
                    "published_checkpoint": fig["checkpoint"], "source": fig["source"],
                    "pin": fig["pin"], "note": _note(fig)})
    return pd.DataFrame(out, columns=cols)


def not_comparable(rows: pd.DataFrame) -> pd.DataFrame:
    """The published figures of a reproduced method, data set and student that `compare`
    leaves out, one line each, with every reason found against any reproduced line (joined
    by ' | ', the metric's first)."""
    import pandas as pd

    cols = ["dataset", "arch", "method", "label", "published_as", "published_metric",
            "published", "grade", "evidence", "reason", "paper", "table", "source", "pin",
            "note"]
    reasons: dict[int, list[str]] = {}
    label: dict[int, str] = {}
    for line, i, why in _pairs(rows):
        reasons.setdefault(i, []).append(why)
        label.setdefault(i, line["label"])
    out = []
    for i, whys in reasons.items():
        if "" in whys:  # compared with some line
            continue
        fig = figures()[i]
        out.append({"dataset": fig["dataset"], "arch": fig["arch"], "method": fig["method"],
                    "label": label[i], "published_as": fig["published_as"],
                    "published_metric": fig["metric"], "published": fig["value"],
                    "grade": fig["grade"], "evidence": fig["evidence"],
                    "reason": " | ".join(dict.fromkeys(w for why in whys
                                                       for w in why.split(" | "))),
                    "paper": fig["paper"],
                    "table": fig["table"], "source": fig["source"], "pin": fig["pin"],
                    "note": _note(fig)})
    return pd.DataFrame(out, columns=cols)


def comparison_table(cmp: pd.DataFrame) -> pd.DataFrame:
    """`compare()` as display strings: reproduced 'mean ± std (k seeds)', published
    'value (grade)', the difference with '!' where it is larger than max(1 pp, 2 std), and
    the grade with what it rests on beside the difference."""
    import pandas as pd

    from bench.report.aggregate import LABELS

    lines = []
    for _, r in cmp.iterrows():
        rep = f"{r['reproduced']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] == r["std"] else "")
        rep += f" ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})"
        ck = r["checkpoint"] + (" (published: not stated)"
                                if r["published_checkpoint"] == "unverified" else "")
        lines.append({"method": r["label"], "checkpoint": ck,
                      "attack": LABELS.get(r["metric"], r["metric"]), "reproduced": rep,
                      "published": graded(r["published"], r["grade"]),
                      "difference": f"{r['difference']:+.2f}" + (" !" if r["flag"] else ""),
                      "grade": evidence(r),
                      "published as": f"{r['published_as']}, {r['paper']}: {r['table']}",
                      "teacher (published)": r["teacher"],
                      "source": f"{r['source']} ({r['pin']})"})
    return pd.DataFrame(lines, columns=["method", "checkpoint", "attack", "reproduced",
                                        "published", "difference", "grade", "published as",
                                        "teacher (published)", "source"])


def not_comparable_table(nc: pd.DataFrame) -> pd.DataFrame:
    """`not_comparable()` as display strings: each figure graded, with why it is left out."""
    import pandas as pd

    lines = [{"method": r["label"], "published as": f"{r['published_as']}, {r['paper']}",
              "metric": r["published_metric"], "published": graded(r["published"], r["grade"]),
              "grade": evidence(r), "not comparable": r["reason"],
              "source": f"{r['source']} ({r['pin']})"} for _, r in nc.iterrows()]
    return pd.DataFrame(lines, columns=["method", "published as", "metric", "published",
                                        "grade", "not comparable", "source"])

"""Published numbers (bench/report/reported.toml) and how a reproduction compares with them.

The published figures are data of their own, never mixed with measured rows: each carries
its grade (P: the authors' own artifact, S: a faithful copy of a paper table or a later
paper's own table, T: third-party notes, unchecked) and its source, and every view of them
shows both. pandas is imported inside the functions (training needs torch only).
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
GRADES = {"P": "primary (the authors' own artifact)",
          "S": "secondary (a faithful copy of a paper table, or a later paper's own table)",
          "T": "tertiary (third-party notes, unchecked against the paper)"}
FIELDS = ("paper", "table", "method", "published_as", "dataset", "arch", "teacher",
          "teacher_key", "checkpoint", "metric", "value", "grade", "source", "note", "margin")


@cache
def figures(path: Path = DATA) -> tuple[dict[str, Any], ...]:
    """Every published figure, one dict per number (FIELDS), in the file's order."""
    try:
        rows = tomllib.loads(path.read_text())["row"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise BenchError(f"published numbers {path} unreadable ({exc})") from None
    out = []
    for i, r in enumerate(rows, 1):
        grades = r.get("grades", {})
        for metric, value in r["values"].items():
            grade = grades.get(metric, r.get("grade"))
            if grade not in GRADES or not isinstance(value, int | float):
                raise BenchError(f"{path}, row {i}: {metric} needs a number and a grade P/S/T")
            out.append({"paper": r["paper"], "table": r["table"], "method": r["method"],
                        "published_as": r["published_as"], "dataset": r["dataset"],
                        "arch": r["arch"], "teacher": r.get("teacher", "unverified"),
                        "teacher_key": r.get("teacher_key", ""),
                        "checkpoint": r.get("checkpoint", "unverified"), "metric": metric,
                        "value": float(value), "grade": grade, "source": r["source"],
                        "note": r.get("note", ""),
                        "margin": r.get("margins", {}).get(metric)})
    return tuple(out)


def frame() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(figures()), columns=list(FIELDS))


def graded(value: float, grade: str) -> str:
    """A published number as every view must show it: with its grade, never bare."""
    return f"{value:.2f} ({grade})"


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


def _matches(fig: dict[str, Any], line: pd.Series) -> bool:
    """Same method, data set, student; the same teacher and checkpoint where the published
    one is known (an unverified checkpoint is compared with `best`)."""
    if (fig["method"], fig["dataset"], fig["arch"]) != (line["method"], line["dataset"],
                                                        line["arch"]):
        return False
    if fig["teacher_key"] and fig["teacher_key"] != line["teacher_key"]:
        return False
    ck = fig["checkpoint"]
    return ck == line["checkpoint"] or (ck not in ("best", "last", "swa_best", "swa_last")
                                        and line["checkpoint"] == "best")


def compare(rows: pd.DataFrame) -> pd.DataFrame:
    """Reproduced mean ± std beside every published figure of the same setting.

    One line per (reproduced table line, published figure): the difference reproduced −
    published in points, and `flag` when it exceeds max(1 pp, 2 std over seeds).
    """
    import pandas as pd

    from bench.report.aggregate import GROUP, aggregate, prepare

    cols = ["dataset", "arch", "method", "label", "checkpoint", "metric", "reproduced",
            "std", "seeds", "published", "grade", "difference", "flag", "paper", "table",
            "published_as", "teacher", "reproduced_teacher", "published_checkpoint",
            "source", "note"]
    rows = prepare(rows)
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows = rows.assign(teacher_key=rows["config"].map(teacher_key) if "config" in rows
                       else "")
    agg = aggregate(rows, [*GROUP, "teacher_key"])
    out = []
    for _, line in agg.iterrows():
        for fig in figures():
            if fig["metric"] not in line or line[fig["metric"]] != line[fig["metric"]]:
                continue
            if not _matches(fig, line):
                continue
            mean, std = line[fig["metric"]], line[f"{fig['metric']}_std"]
            diff = mean - fig["value"]
            tol = max(1.0, 2 * std) if std == std else 1.0
            out.append({"dataset": line["dataset"], "arch": line["arch"],
                        "method": line["method"], "label": line["label"],
                        "checkpoint": line["checkpoint"], "metric": fig["metric"],
                        "reproduced": mean, "std": std, "seeds": line[f"{fig['metric']}_count"],
                        "published": fig["value"], "grade": fig["grade"], "difference": diff,
                        "flag": abs(diff) > tol, "paper": fig["paper"], "table": fig["table"],
                        "published_as": fig["published_as"], "teacher": fig["teacher"],
                        "reproduced_teacher": line["teacher_key"],
                        "published_checkpoint": fig["checkpoint"], "source": fig["source"],
                        "note": fig["note"]})
    return pd.DataFrame(out, columns=cols)


def comparison_table(cmp: pd.DataFrame) -> pd.DataFrame:
    """`compare()` as display strings: reproduced 'mean ± std (k seeds)', published
    'value (grade)', the difference with '!' where it is larger than max(1 pp, 2 std)."""
    import pandas as pd

    from bench.report.aggregate import LABELS

    lines = []
    for _, r in cmp.iterrows():
        rep = f"{r['reproduced']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] == r["std"] else "")
        rep += f" ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})"
        lines.append({"method": r["label"], "checkpoint": r["checkpoint"],
                      "attack": LABELS.get(r["metric"], r["metric"]), "reproduced": rep,
                      "published": graded(r["published"], r["grade"]),
                      "difference": f"{r['difference']:+.2f}" + (" !" if r["flag"] else ""),
                      "published as": f"{r['published_as']}, {r['paper']}: {r['table']}",
                      "teacher (published)": r["teacher"],
                      "source": r["source"]})
    return pd.DataFrame(lines, columns=["method", "checkpoint", "attack", "reproduced",
                                        "published", "difference", "published as",
                                        "teacher (published)", "source"])

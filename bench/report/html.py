"""The report as one self-contained HTML page: inline CSS and JavaScript, figures inline as
base64, no network. Tables sort by any column (click a header); every line's full
configuration opens on demand; published numbers always carry their grade. A table wider than
the window scrolls sideways in its own box rather than spilling past the page (where its
right-hand columns were cut off), and notes are written in markdown (for results.md) and
rendered here: inline code, bold and links, everything else escaped.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1800px;padding:0 1em;color:#222;line-height:1.45}p{max-width:75em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}
.scroll{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:right;vertical-align:top;
white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:normal;
vertical-align:bottom}
td.text{white-space:normal}td.text:first-child{min-width:7em}td.config{min-width:8em}
.scroll th:first-child,.scroll td:first-child{position:sticky;left:0;box-shadow:1px 0 #ddd}
.scroll tbody td:first-child{background:#fff}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.text,th.text{text-align:left}tfoot td{font-style:italic;background:#fafafa}
b.best{font-weight:700}.flag{color:#b00;font-weight:700}
details pre{text-align:left;font-size:.8em;max-width:36em;white-space:pre-wrap;
overflow-wrap:break-word}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}p.note{color:#555;font-size:.9em}
code{background:#f3f3f3;padding:0 .2em;border-radius:3px;font-size:.95em}
"""

JS = """
function sortTable(th){
  const table=th.closest('table'), body=table.tBodies[0], idx=th.cellIndex;
  const dir=th.getAttribute('aria-sort')==='ascending'?'descending':'ascending';
  for(const h of table.tHead.rows[0].cells){h.removeAttribute('aria-sort');}
  th.setAttribute('aria-sort',dir);
  const key=r=>{const c=r.cells[idx];const v=c.dataset.sort!==undefined?c.dataset.sort:
    c.textContent.trim();const n=parseFloat(v);return isNaN(n)||v===''?v:n;};
  const rows=Array.from(body.rows);
  rows.sort((a,b)=>{const x=key(a),y=key(b);let c;
    if(typeof x==='number'&&typeof y==='number'){c=x-y;}
    else if(typeof x==='number'){c=-1;}else if(typeof y==='number'){c=1;}
    else{c=String(x).localeCompare(String(y));}
    return dir==='ascending'?c:-c;});
  for(const r of rows){body.appendChild(r);}
}
document.addEventListener('DOMContentLoaded',()=>{
  for(const th of document.querySelectorAll('table.sortable thead th')){
    th.addEventListener('click',()=>sortTable(th));}
});
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


CODE = re.compile(r"`([^`]+)`")
BOLD = re.compile(r"\*\*(.+?)\*\*")
LINK = re.compile(r"\[([^\]]+)\]\(([^()\s]+)\)")
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
SAFE_SCHEMES = ("http:", "https:", "mailto:")


def inline_markdown(text: str) -> str:
    """A note's markdown (inline code, bold, links) as HTML, all else escaped: the notes are
    written for results.md, and shown raw they read as stray backticks and asterisks."""
    parts = CODE.split(text)  # odd positions: the insides of code spans, taken literally
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else _prose(p)
                   for i, p in enumerate(parts))


def _prose(text: str) -> str:
    return LINK.sub(_link, BOLD.sub(r"<strong>\1</strong>", esc(text)))


def _link(m: re.Match[str]) -> str:
    """A link, unless its scheme could run code (javascript:, data:): then the text as is."""
    scheme = SCHEME.match(m[2])
    if scheme and scheme[0].lower() not in SAFE_SCHEMES:
        return m[0]
    return f'<a href="{m[2]}">{m[1]}</a>'


def scroll(table: str) -> str:
    """`table` in a box that scrolls sideways when the table is wider than the page."""
    return f'<div class="scroll">{table}</div>'


def _cell(text: str, sort: Any = None, cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    if sort is not None and sort == sort:  # NaN sorts as text
        attrs += f' data-sort="{esc(sort)}"'
    return f"<td{attrs}>{text}</td>"


def section_table(agg: pd.DataFrame, rows: pd.DataFrame, metrics: list[str],
                  margin: tuple[str, str, dict[str, float]] | None) -> str:
    """One (data set, arch) section: a line per (method, checkpoint), sortable; the numbers
    are `agg`'s (mean ± sample std over seeds), the configuration is the rows'."""
    from bench.report.aggregate import (
        LABELS,
        best_means,
        cell_text,
        image_counts,
        is_best,
        tie_mark,
    )

    best = best_means(agg, metrics)
    heads = ["method", "checkpoint", "epochs", "seeds",
             *(f"{LABELS.get(m, m)} (n={image_counts(agg, m)})" for m in metrics),
             "train (s)", "configuration"]
    out = ['<table class="sortable"><thead><tr>']
    out += [f'<th class="{"text" if i < 2 or h == "configuration" else ""}">{esc(h)}</th>'
            for i, h in enumerate(heads)]
    out.append("</tr></thead><tbody>")
    for _, r in agg.iterrows():
        cells = [_cell(esc(r["label"]), cls="text"), _cell(esc(r["checkpoint"]), cls="text"),
                 _cell(esc(r["epochs"]), r["epochs"]),
                 _cell(esc(r["seeds"]) + (" (no std)" if r["seeds"] == 1 else ""), r["seeds"])]
        for m in metrics:
            text = esc(cell_text(r, m, r["seeds"]))
            if is_best(r, m, best):
                mean = f"{r[m]:.2f}"
                text = text.replace(mean, f'<b class="best">{mean}</b>', 1)
            else:
                text += esc(tie_mark(r, m, best))
            cells.append(_cell(text, r[m]))
        t = r.get("train_seconds", float("nan"))
        cells.append(_cell("–" if t != t else f"{t:.1f}", t))
        cells.append(_cell(_config(rows, r), cls="text config"))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody>")
    if margin is not None:
        ck, label, vals = margin
        foot = [f'<td class="text">{esc(label)}</td>', f'<td class="text">{esc(ck)}</td>',
                "<td></td><td></td>"]
        foot += [f"<td>{vals[m]:+.2f}</td>" if m in vals else "<td></td>" for m in metrics]
        out.append("<tfoot><tr>" + "".join(foot) + "<td></td><td></td></tr></tfoot>")
    out.append("</table>")
    return scroll("".join(out))


def _config(rows: pd.DataFrame, line: pd.Series) -> str:
    """The line's cells: id, seed and the full resolved configuration, in a <details>."""
    g = rows[(rows["label"] == line["label"]) & (rows["checkpoint"] == line["checkpoint"])]
    cells = []
    for _, r in g.sort_values("seed").iterrows():
        cfg = r["config"] if isinstance(r.get("config"), dict) else {}
        cells.append({"cell_id": r["cell_id"], "seed": r["seed"], "device": r.get("device"),
                      "git_commit": r.get("git_commit"), "config": cfg})
    text = json.dumps(cells, indent=1, default=str, sort_keys=True)
    return (f"<details><summary>{len(cells)} cell(s)</summary><pre>{esc(text)}</pre>"
            "</details>")


def reported_table(cmp: pd.DataFrame) -> str:
    """Reproduced beside published (sortable); a published number never without its grade."""
    from bench.report.reported import comparison_table

    t = comparison_table(cmp)
    out = ['<table class="sortable reported"><thead><tr>']
    out += [f'<th class="text">{esc(c)}</th>' for c in t.columns]
    out.append("</tr></thead><tbody>")
    for (_, r), (_, c) in zip(t.iterrows(), cmp.iterrows(), strict=True):
        sort = {"reproduced": c["reproduced"], "published": c["published"],
                "difference": c["difference"]}
        tds = []
        for col in t.columns:
            text = esc(r[col])
            if col == "difference" and c["flag"]:
                text = f'<span class="flag" title="larger than max(1 pp, 2 std)">{text}</span>'
            tds.append(_cell(text, sort.get(col), "" if col in sort else "text"))
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return scroll("".join(out))


def not_comparable_table(apart: pd.DataFrame) -> str:
    """The published figures of the reproduced settings left out, each with why."""
    from bench.report.reported import not_comparable_table as lines

    return ("<h3>Published figures of these settings that are not comparable</h3>"
            + text_table(lines(apart)))


def text_table(t: pd.DataFrame) -> str:
    """A table of display strings, sortable, in a box that scrolls sideways."""
    head = "".join(f'<th class="text">{esc(c)}</th>' for c in t.columns)
    body = "".join("<tr>" + "".join(_cell(esc(r[c]), cls="text") for c in t.columns)
                   + "</tr>" for _, r in t.iterrows())
    return scroll(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}'
                  "</tbody></table>")


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def page(title: str, intro: str, sections: list[dict[str, Any]], reported: str,
         appendix: str = "") -> str:
    """The whole page. `sections`: dicts with title, table (HTML), how (markdown), notes (list
    of markdown) and figures (list of (png path, alt))."""
    body = [f"<h1>{esc(title)}</h1>", f"<p>{esc(intro)}</p>"]
    toc = "".join(f'<li><a href="#s{i}">{esc(s["title"])}</a></li>'
                  for i, s in enumerate(sections))
    body.append(f'<ul>{toc}<li><a href="#reported">Reproduced vs published</a></li></ul>')
    for i, s in enumerate(sections):
        body.append(f'<section id="s{i}" class="results"><h2>{esc(s["title"])}</h2>')
        body.append(s["table"])
        body.append(f'<p class="note">{inline_markdown(s["how"])}</p>')
        body += [f'<p class="note">{inline_markdown(n)}</p>' for n in s["notes"]]
        body += [image(p, alt) for p, alt in s["figures"]]
        body.append("</section>")
    from bench.report.reported import GRADES_NOTE

    body.append('<section id="reported"><h2>Reproduced vs published</h2>'
                '<p class="note">Published numbers are data of bench (bench/report/reported.toml), '
                f"never mixed with measured rows. {esc(GRADES_NOTE)} Differences are "
                "reproduced minus published, in points; ! marks one larger than max(1 pp, 2 "
                "std over seeds).</p>" + reported + "</section>")
    body.append(appendix)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style><script>{JS}</script></head>"
            "<body>" + "\n".join(body) + "</body></html>\n")

"""index.html in a real headless Chromium: loads offline without console errors, one line
per (method, checkpoint) of each (data set, arch) section with the right mean ± std, a click
on a column header sorts it, and no table is clipped at a common window width."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cli_run import run_all_module

from bench.core.store import Store
from bench.train.cells import Cell, resolve
from bench.train.pipeline import row_key

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
GRID = {("cifar10", "resnet18"): (("peeraid", "rslad", "pgdat"), (0, 1, 2)),
        ("digits", "small_cnn"): (("standard", "pgdat"), (0, 1))}
ATTACKS = ("clean", "fgsm", "pgd20", "pgd20s", "cw", "aa")  # the example report's columns
METHOD_OF = {"PeerAiD": "peeraid", "RSLAD": "rslad", "PGD-AT": "pgdat",
             "Standard": "standard"}  # the tables show display names


def _value(method: str, dataset: str, seed: int, ckpt: str, attack: str) -> float:
    base = {"clean": 0.85, "fgsm": 0.6, "pgd20": 0.54, "pgd20s": 0.55, "cw": 0.52,
            "aa": 0.51}[attack]
    return round(base - 0.021 * len(method) + 0.031 * (seed % 2) + 0.004 * seed
                 - 0.01 * (ckpt == "last") + 0.05 * (dataset == "digits"), 4)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("html")
    st = Store(root)
    for (dataset, arch), (methods, seeds) in GRID.items():
        preset = "paper" if dataset == "cifar10" else "faithful"
        for m in methods:
            for s in seeds:
                r = resolve(Cell(m, dataset, arch, s, preset))
                for ck in ("best", "last"):
                    row = {"method": m, "preset": preset, "dataset": dataset, "arch": arch,
                           "seed": s, "epochs": r.params.epochs, "checkpoint": ck,
                           "eps": r.spec.eps, "train_seconds": 100.0 + s, "cell_id": r.id,
                           "config": r.config, "device": "cpu", "created": "2026-01-01"}
                    for a in ATTACKS:
                        row[a] = _value(m, dataset, s, ck, a)
                        row[f"n_{a}"] = 500
                    st.put(row_key(r, ck), row)
    run_all = run_all_module()
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_all.main(["--no-train", "--out", str(root)]) == 0
    return root / "report" / "index.html", pd.DataFrame(st.read()[0])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("no chromium + chromedriver on this machine (Debian: apt-get install "
                    "chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed "
                                    "(it is in the dev extra)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield drv
    drv.quit()


def _errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_console_errors_are_seen(browser, tmp_path) -> None:
    """The control: a page with a broken script does show up as a console error."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>no_such_function()</script></body></html>")
    browser.get(bad.as_uri())
    assert any("no_such_function" in e["message"] for e in _errors(browser))


def test_page_loads_offline_without_console_errors(report, browser) -> None:
    index, _ = report
    text = index.read_text()
    assert "http://" not in text and "https://" not in text  # no CDN, nothing fetched
    browser.get(index.as_uri())
    assert _errors(browser) == []
    imgs = browser.find_elements("css selector", "img")
    assert imgs and all(i.get_attribute("src").startswith("data:image/png;base64,")
                        for i in imgs)
    assert all(browser.execute_script("return arguments[0].naturalWidth", i) > 100
               for i in imgs)


def test_one_line_per_method_and_checkpoint_with_the_right_numbers(report, browser) -> None:
    index, rows = report
    browser.get(index.as_uri())
    sections = browser.find_elements("css selector", "section.results")
    assert [s.find_element("tag name", "h2").text for s in sections] == [
        "cifar10 / resnet18", "digits / small_cnn"]
    for sec in sections:
        dataset, arch = sec.find_element("tag name", "h2").text.split(" / ")
        table = sec.find_element("css selector", "table.sortable")
        heads = [h.text for h in table.find_elements("css selector", "thead th")]
        col = next(i for i, h in enumerate(heads) if h.startswith("Clean"))
        lines = table.find_elements("css selector", "tbody tr")
        g = rows[(rows.dataset == dataset) & (rows.arch == arch)]
        want = g.groupby(["method", "checkpoint"])["clean"].agg(["mean", "std", "count"])
        assert len(lines) == len(want)
        seen = set()
        for tr in lines:
            cells = tr.find_elements("tag name", "td")
            key = (METHOD_OF[cells[0].text.split(" (")[0]], cells[1].text)  # + "(300 ep)"
            w = want.loc[key]
            # rows without per-image outcomes: every line ties, marked " ≈"
            assert cells[col].text.removesuffix(" ≈") == (
                f"{w['mean'] * 100:.2f} ± {w['std'] * 100:.2f}"), key
            assert cells[3].text == str(int(w["count"]))
            seen.add(key)
        assert seen == set(want.index)


def test_click_on_a_header_sorts_the_column(report, browser) -> None:
    index, _ = report
    browser.get(index.as_uri())
    table = browser.find_element("css selector", "section.results table.sortable")
    heads = table.find_elements("css selector", "thead th")
    col = next(i for i, h in enumerate(heads) if h.text.startswith("PGD-20"))

    def column() -> list[float]:
        return [float(tr.find_elements("tag name", "td")[col].get_attribute("data-sort"))
                for tr in table.find_elements("css selector", "tbody tr")]

    before = column()
    assert before != sorted(before)  # the test would notice a sort
    heads[col].click()
    assert column() == sorted(before) and heads[col].get_attribute("aria-sort") == "ascending"
    heads[col].click()
    assert column() == sorted(before, reverse=True)
    heads[0].click()  # a text column sorts as text
    names = [tr.find_element("tag name", "td").text
             for tr in table.find_elements("css selector", "tbody tr")]
    assert names == sorted(names, key=str.casefold)  # as the page's localeCompare sorts
    assert _errors(browser) == []


def test_configuration_on_demand_and_the_reported_view(report, browser) -> None:
    index, rows = report
    browser.get(index.as_uri())
    tr = browser.find_element("css selector", "section.results table.sortable tbody tr")
    pre = tr.find_element("css selector", "details pre")
    assert not pre.is_displayed()
    tr.find_element("css selector", "details summary").click()
    assert pre.is_displayed()
    method = METHOD_OF[tr.find_element("tag name", "td").text.split(" (")[0]]
    ids = set(rows[(rows.method == method) & (rows.dataset == "cifar10")]["cell_id"])
    assert any(i in pre.text for i in ids) and '"params"' in pre.text
    rep = browser.find_element("css selector", "#reported table.sortable")
    heads = [h.text for h in rep.find_elements("css selector", "thead th")]
    pub = heads.index("published")
    cells = [tr.find_elements("tag name", "td")
             for tr in rep.find_elements("css selector", "tbody tr")]
    assert cells and all(c[pub].text[-3:] in ("(P)", "(S)", "(T)") for c in cells)
    assert any(c[pub].text == "85.01 (S)" for c in cells)  # PeerAiD's CIFAR-10 clean


def test_page_shows_display_names_and_figures_of_one_checkpoint(report) -> None:
    """Without a browser: each section's lines are named by the methods' display names, one
    per (method, checkpoint), and its accuracy and robustness figures are of checkpoint best."""
    import html
    import re

    index, rows = report
    text = html.unescape(index.read_text()).split('<section id="reported"')[0]
    lines = [(label, ck) for label, ck in re.findall(
        r'<tr><td class="text">([^<]+)</td><td class="text">([^<]+)</td>', text)
        if not label.startswith("margin: ")]
    assert len(lines) == len(rows.groupby(["dataset", "method", "checkpoint"]))
    assert {label.split(" (")[0] for label, _ in lines} == set(METHOD_OF)
    assert {ck for _, ck in lines} == {"best", "last"}
    alts = re.findall(r'<img alt="([^"]+)"', text)
    for dataset, arch in GRID:
        for what in ("Accuracy under each attack", "Clean vs robust accuracy"):
            assert f"{what}, {dataset} / {arch}, checkpoint 'best'" in alts, (what, alts)


def test_every_table_scrolls_and_notes_render_markdown(report) -> None:
    """Without a browser: every table sits in a horizontally scrolling box (a wide table
    scrolls instead of being clipped), and notes are HTML from markdown, not raw backticks."""
    import re

    from bench.report import html

    index, _ = report
    text = index.read_text()
    tables = text.count("<table")
    assert tables >= 3 and len(re.findall(r'<div class="scroll"><table', text)) == tables
    assert ".scroll{overflow-x:auto" in text
    assert "<code>best</code>" in text and "`best`" not in text  # the "how measured" note
    page = html.page("t", "intro", [{"title": "s", "table": "", "how": "**How.** `n=` x",
                                     "notes": ["see `a<b>` and [docs](https://x.org/?a=1&b=2)",
                                               "[bad](javascript:alert(1)) *not* bold"],
                                     "figures": []}], "")
    assert '<p class="note"><strong>How.</strong> <code>n=</code> x</p>' in page
    assert ('<p class="note">see <code>a&lt;b&gt;</code> and '
            '<a href="https://x.org/?a=1&amp;b=2">docs</a></p>') in page
    assert '<p class="note">[bad](javascript:alert(1)) *not* bold</p>' in page  # kept as text


def _clipped(browser) -> list[str]:
    """Cells whose right edge lies past what their table's box shows, where that box does
    not scroll; and a page wider than the window."""
    return browser.execute_script("""
      const out = [], vw = document.documentElement.clientWidth;
      if (document.documentElement.scrollWidth > vw) out.push('the page scrolls sideways');
      for (const table of document.querySelectorAll('table')) {
        const box = table.parentElement, r = box.getBoundingClientRect();
        const scrolls = ['auto', 'scroll'].includes(getComputedStyle(box).overflowX);
        if (box.scrollWidth > box.clientWidth && !scrolls) out.push('box does not scroll');
        if (r.right > vw + 0.5) out.push('box wider than the window');
        const right = r.left + box.clientLeft + box.clientWidth;
        for (const c of table.querySelectorAll('th, td')) {
          if (!scrolls && c.getBoundingClientRect().right > right + 0.5) {
            out.push(c.textContent.trim().slice(0, 40));
          }
        }
      }
      return out;""")


def test_no_table_is_clipped_at_1400_px(report, browser) -> None:
    """The user's report: at 1400 px (and still at 1920) the main table spilled past the page
    and its AutoAttack, train and configuration columns were cut off. Now at 1400 px, with
    every configuration open, no cell lies outside its table's box unless that box scrolls;
    at 900 px the main tables must scroll, and do; at 1920 px they fit without scrolling."""
    index, _ = report

    def scrolling() -> list[bool]:
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('section.results div.scroll'))"
            ".map(b => b.scrollWidth > b.clientWidth)")

    try:
        for width, wide in ((1400, None), (900, True), (1920, False)):
            browser.set_window_size(width, 1000)
            browser.get(index.as_uri())
            if wide is None:
                for summary in browser.find_elements("css selector", "details summary"):
                    summary.click()
            assert _clipped(browser) == [], width
            if wide is not None:
                assert scrolling() == [wide] * len(GRID), width
    finally:
        browser.set_window_size(1400, 1000)

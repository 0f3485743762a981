"""``xai-lab report``: one ``index.html`` over a sweep's best trials, to choose a model by looking.

The page holds the best model of each dataset, the cross-dataset comparison, the
leaderboard (sortable), and per reported trial its hyperparameters, test metrics per
class, curves, confusion matrix and explanation galleries; a failed report shows its
error. Every link is relative, so the folder opens from ``file://`` and can be copied
whole. With ``--out`` the reports are copied there first. No Ray needed.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import time
from pathlib import Path

import pandas as pd

from sweeps.leaderboard import read_leaderboard
from xai_lab.atomic import atomic_write_text
from xai_lab.config import read_yaml
from xai_lab.errors import UserError
from xai_lab.plots import CURVES

COPIED = ("leaderboard.csv", "comparison.csv", "comparison.json", "sweep.yaml")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def check_sweep_dir(sweep: Path) -> None:
    if not (sweep / "leaderboard.csv").is_file():
        raise UserError(
            f"{sweep} is not a finished sweep (no leaderboard.csv); pass --sweep ray_results/<sweep>"
        )


def select_reported(board: pd.DataFrame, top: int | None) -> pd.DataFrame:
    """Trials that went through the fan-out (ok or failed), best first, ``top`` per dataset."""
    done = board[board["report"].fillna("") != ""].sort_values(["dataset", "rank"])
    return done.groupby("dataset", sort=False).head(top) if top is not None else done


def build_report(sweep: str | Path, top: int | None = None, out: str | Path | None = None) -> Path:
    """Write ``index.html`` for the sweep folder ``sweep``.

    Args:
        sweep: ``ray_results/<sweep>`` (holds leaderboard.csv, reports/, comparison.*).
        top: show the best ``top`` reported trials per dataset (all reported ones when None).
        out: a folder to pull the reports into (default: the sweep folder itself).

    Returns:
        The path of ``index.html``.
    """
    sweep = Path(sweep)
    check_sweep_dir(sweep)
    board = read_leaderboard(sweep / "leaderboard.csv")
    chosen = select_reported(board, top)
    dest = Path(out) if out else sweep
    if dest.resolve() != sweep.resolve():
        if dest.exists() and any(dest.iterdir()) and not (dest / "index.html").is_file():
            raise UserError(
                f"--out {dest} exists and is not an xai-lab report folder; choose a new or empty folder"
            )
        _copy_reports(sweep, dest, chosen)
    page = render(dest, board, chosen)
    index = dest / "index.html"
    atomic_write_text(index, page)
    return index


def _copy_reports(sweep: Path, dest: Path, chosen: pd.DataFrame) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (sweep / name).is_file():
            shutil.copy2(sweep / name, dest / name)
    for png in sweep.glob("comparison*.png"):
        shutil.copy2(png, dest / png.name)
    for row in chosen.itertuples():
        src = sweep / "reports" / row.dataset / row.trial_id
        if src.is_dir():
            shutil.copytree(src, dest / "reports" / row.dataset / row.trial_id, dirs_exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------

CSS = """
:root{--ink:#1d2433;--muted:#5b6475;--line:#e3e7ee;--bg:#f6f8fb;--card:#fff;--accent:#2f6fdb;
--good:#1f8a4c;
--bad:#c0392b;--warn:#b7791f}
*{box-sizing:border-box}
body{margin:0;
font:15px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--ink);background:var(--bg)}
header{background:linear-gradient(120deg,#1d2a4d,#2f6fdb);color:#fff;padding:28px 40px 22px}
header h1{margin:0 0 4px;font-size:26px;font-weight:650;letter-spacing:-.01em}
header p{margin:0;opacity:.85}
header p.headline{margin-top:10px;opacity:1;font-size:16px;font-weight:550}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 40px;
display:flex;gap:18px;flex-wrap:wrap;font-size:14px}
nav a{color:var(--ink);text-decoration:none;font-weight:550}nav a:hover{color:var(--accent)}
main{max-width:1280px;margin:0 auto;padding:24px 40px 60px}
h2{font-size:20px;margin:34px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:17px;margin:22px 0 8px}h4{font-size:14px;margin:16px 0 6px;color:var(--muted);
text-transform:uppercase;
letter-spacing:.04em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:16px 18px;
box-shadow:0 1px 2px rgba(20,30,60,.04)}
.card .ds{font-size:13px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.card .big{font-size:30px;font-weight:700;margin:2px 0}.card .big small{font-size:14px;
color:var(--muted);
font-weight:500}
.card a{color:var(--accent)}
.kv{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px}
.kv span{background:#eef3fc;border-radius:999px;padding:2px 9px;font-size:12.5px}
.kv span.diff{background:#fff2d6}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:10px;
overflow:hidden;
font-size:13.5px;width:100%}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#f0f3f8;font-weight:600;cursor:pointer;user-select:none;position:sticky;top:0}
td:first-child,th:first-child,td.l,th.l{text-align:left}
tr.reported td{background:#f4f8ff}tr.failed td{background:#fdf0ee}
.scroll{overflow-x:auto;border-radius:10px}
.status{font-size:12px;border-radius:999px;padding:1px 8px}
.s-completed{background:#e3f5ea;color:var(--good)}.s-pruned{background:#f2f2f2;color:var(--muted)}
.s-early_stopped{background:#fdf3dc;color:#8a5a00}
.s-error,.s-failed{background:#fbe3e0;color:var(--bad)}
.bar{display:inline-block;height:8px;border-radius:4px;background:var(--accent);
vertical-align:middle;margin-left:6px}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:12px}
.figs img,.wide img{width:100%;background:#fff;border:1px solid var(--line);border-radius:8px}
.wide{max-width:980px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.gallery figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:8px;padding:4px}
.gallery img{width:100%}
.gallery figcaption{font-size:12px;color:var(--muted);padding:0 4px 2px}
.trial{background:var(--card);border:1px solid var(--line);border-radius:14px;padding:6px 22px 18px;
margin:18px 0}
.error{background:#fdf0ee;border:1px solid #f3c5bf;color:var(--bad);padding:10px 14px;border-radius:8px;
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;white-space:pre-wrap}
.note{color:var(--muted);font-size:13.5px}
img.broken{outline:3px solid var(--bad)}
details summary{cursor:pointer;color:var(--accent);font-weight:550;margin:8px 0}
footer{color:var(--muted);font-size:12.5px;text-align:center;padding:20px}
"""

SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows), asc = th.dataset.asc !== '1';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v || a.cells[col].textContent;
      var y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    th.dataset.asc = asc ? '1' : '0'; rows.forEach(function(r){ tb.appendChild(r); });
  });
});
window.addEventListener('load', function(){
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function(i){ return !(i.complete && i.naturalWidth > 0); });
  broken.forEach(function(i){ i.classList.add('broken'); i.alt = 'missing: ' + i.getAttribute('src'); });
  document.body.dataset.images = imgs.length; document.body.dataset.broken = broken.length;
  document.body.dataset.brokenSrc = broken.map(function(i){ return i.getAttribute('src'); }).join(' ');
});
"""


def _img(src: str, alt: str, cls: str = "") -> str:
    return f'<img src="{_e(src)}" alt="{_e(alt)}" loading="eager"{f" class={cls!r}" if cls else ""}>'


def _status(text: str) -> str:
    key = "failed" if text.startswith("failed") else text
    return f'<span class="status s-{_e(key)}">{_e(text if len(text) < 40 else text[:40] + "…")}</span>'


def render(dest: Path, board: pd.DataFrame, chosen: pd.DataFrame) -> str:
    """The HTML of the report for the files under ``dest``."""
    sweep_cfg = read_yaml(dest / "sweep.yaml") if (dest / "sweep.yaml").is_file() else {}
    name = sweep_cfg.get("name") or dest.name
    metric = (sweep_cfg.get("search") or {}).get("metric", "val_macro_f1")
    space = list((sweep_cfg.get("space") or {}).keys())
    datasets = list(dict.fromkeys(board["dataset"])) if not board.empty else []
    counts = board["status"].value_counts().to_dict() if not board.empty else {}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(name)}: xai-lab sweep report</title><style>{CSS}</style></head><body>",
        f"<header><h1>Sweep <em>{_e(name)}</em></h1><p>{len(board)} trials over {len(datasets)} dataset(s) "
        f"({_e(', '.join(datasets))}): {_e(summary)}. Ranked by best {_e(metric)} on the validation split; "
        f"test metrics come from each trial's best checkpoint.</p>"
        f"<p class='headline'>{_e(headline(dest, chosen))}</p></header>",
        "<nav><a href='#best'>Best models</a><a href='#comparison'>Comparison</a>"
        "<a href='#leaderboard'>Leaderboard</a>"
        + "".join(f"<a href='#ds-{_e(d)}'>{_e(d)}</a>" for d in datasets)
        + "</nav><main>",
    ]
    parts.append(_best_cards(dest, chosen, space))
    parts.append(_comparison(dest))
    parts.append(_leaderboard(board, space))
    for d in datasets:
        rows = chosen[chosen["dataset"] == d]
        parts.append(f"<h2 id='ds-{_e(d)}'>{_e(d)}: the {len(rows)} best trial(s), in detail</h2>")
        if rows.empty:
            parts.append("<p class='note'>No trial of this dataset finished with a checkpoint.</p>")
        base = board[(board["dataset"] == d) & (board["base"].astype(str) == "True")]
        base_row = base.iloc[0] if not base.empty else None
        for row in rows.itertuples():
            parts.append(_trial_section(dest, row._asdict(), board.loc[row.Index], space, base_row))
    parts.append(
        f"</main><footer>xai-lab · generated {time.strftime('%Y-%m-%d %H:%M')} · "
        f"<a href='leaderboard.csv'>leaderboard.csv</a></footer><script>{SCRIPT}</script></body></html>"
    )
    return "\n".join(parts)


def _summary(dest: Path, dataset: str, trial: str) -> dict | None:
    f = dest / "reports" / dataset / trial / "test_summary.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _explanation_metrics(dest: Path, dataset: str, trial: str) -> dict:
    f = dest / "reports" / dataset / trial / "xai" / "metrics.json"
    entries = json.loads(f.read_text()) if f.is_file() else {}
    return {m: e for m, e in entries.items() if isinstance(e, dict)}


def lead_method(entries: dict) -> str | None:
    """The method whose maps are most the model's doing: one that beats the randomized model first, then
    the largest lead over it in the pointing game (insertion AUC without masks)."""
    def lead(item) -> tuple:
        method, e = item
        key = "pointing_game" if "pointing_game" in e else "insertion_auc"
        gap = e.get(key, 0.0) - (e.get("randomized_model_baseline") or {}).get(key, 0.0)
        return bool(e.get("beats_randomized_model")), gap
    return max(entries.items(), key=lead)[0] if entries else None


def headline(dest: Path, chosen: pd.DataFrame) -> str:
    """One sentence, computed from the reports: how the best trial of each dataset did, and, with several
    datasets, how much worse the others are than the best in accuracy and in explanation metrics."""
    best = []
    for d, rows in chosen.groupby("dataset", sort=False):
        ok = rows[rows["report"] == "ok"]
        summary = _summary(dest, d, ok.iloc[0]["trial_id"]) if not ok.empty else None
        if summary:
            best.append((d, summary, _explanation_metrics(dest, d, ok.iloc[0]["trial_id"])))
    if not best:
        return "No trial has a report yet."
    best.sort(key=lambda b: -b[1]["accuracy"])
    top, top_summary, top_metrics = best[0]
    method = lead_method(top_metrics)
    if len(best) == 1:
        verdict = f"; {method} {top_metrics[method]['randomized_model_verdict']}" if (
            method and "randomized_model_verdict" in top_metrics[method]) else ""
        return f"The best {top} model reaches test accuracy {top_summary['accuracy']:.2f} on {top_summary['n']} " \
               f"images{verdict}."
    clauses = []
    for d, summary, metrics in best[1:]:
        gap = top_summary["accuracy"] - summary["accuracy"]
        words = "visibly worse than" if gap >= 0.05 else "about as good as"
        clause = f"{d} is {words} {top}: test accuracy {summary['accuracy']:.2f} against {top_summary['accuracy']:.2f}"
        if method and method in metrics:
            keys = [k for k in ("pointing_game", "insertion_auc") if k in metrics[method] and k in top_metrics[method]]
            diffs = [metrics[method][k] - top_metrics[method][k] for k in keys]
            trend = "worse" if all(d < -0.02 for d in diffs) else (
                "mixed" if any(d < -0.02 for d in diffs) else "no worse")
            scores = ", ".join(f"{k.replace('_', ' ').replace('auc', 'AUC')} {metrics[method][k]:.2f} against "
                               f"{top_metrics[method][k]:.2f}" for k in keys)
            clause += f"; {method}'s explanations are {trend} ({scores})"
        clauses.append(clause)
    return "; ".join(clauses) + "."


METRIC_LABELS = {"deletion_auc": "deletion AUC ↓", "insertion_auc": "insertion AUC ↑",
                 "randomization_spearman": "randomization ρ ↓", "pointing_game": "pointing game ↑",
                 "mask_iou": "mask IoU ↑"}


def _metrics_table(entries: dict) -> str:
    """Each method's explanation metrics beside its two baselines, and the verdicts."""
    if not entries:
        return ""
    keys = [k for k in METRIC_LABELS if any(k in e for e in entries.values())]
    out = ["<h4>explanation metrics</h4><p class='note'>Each cell: the method, then (small) random maps · the "
           "same method on the fully randomized model.</p><div class='scroll' style='max-width:900px'><table>"
           "<thead><tr><th class='l'>method</th>"
           + "".join(f"<th>{_e(METRIC_LABELS[k])}</th>" for k in keys) + "</tr></thead><tbody>"]
    for method, e in entries.items():
        cells = []
        for k in keys:
            rnd = (e.get("random_baseline") or {}).get(k)
            rmod = (e.get("randomized_model_baseline") or {}).get(k)
            base = " · ".join(_fmt(v, 2) for v in (rnd, rmod) if v is not None)
            cells.append(f"<td>{_fmt(e.get(k))} <small class='note'>{_e(base)}</small></td>")
        out.append(f"<tr><td class='l'>{_e(method)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table></div><ul class='verdicts'>")
    for method, e in entries.items():
        for key in ("randomization_verdict", "randomized_model_verdict"):
            if e.get(key):
                out.append(f"<li><b>{_e(method)}</b> {_e(e[key])}.</li>")
    out.append("</ul>")
    return "".join(out)


def _params(row, space: list[str], base_row=None) -> str:
    spans = []
    for key in space:
        value = row[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        diff = base_row is not None and str(base_row[key]) != str(value)
        spans.append(
            f"<span class='{'diff' if diff else ''}' title='{_e(key)}'>{_e(key.split('.')[-1])} "
            f"<b>{_e(_fmt(value, 4))}</b></span>"
        )
    return f"<div class='kv'>{''.join(spans)}</div>"


def _best_cards(dest: Path, chosen: pd.DataFrame, space: list[str]) -> str:
    out = ["<h2 id='best'>Best model per dataset</h2><div class='cards'>"]
    for d, rows in chosen.groupby("dataset", sort=False):
        ok = rows[rows["report"] == "ok"]
        if ok.empty:
            continue
        row = ok.iloc[0]
        s = _summary(dest, d, row["trial_id"]) or {}
        out.append(
            f"<div class='card'><div class='ds'>{_e(d)}</div>"
            f"<div class='big'>{_fmt(s.get('macro_f1'))} <small>test macro-F1</small></div>"
            f"<div>test accuracy <b>{_fmt(s.get('accuracy'))}</b> on {_e(s.get('n', '–'))} images · "
            f"val {_fmt(row['score'])}</div>"
            f"<div class='note'>trial <a href='#t-{_e(d)}-{_e(row['trial_id'])}'>{_e(row['trial_id'])}</a>, "
            f"{_e(row['epochs_run'])} epochs, {_fmt(row['wall_seconds'], 0)} s</div>"
            f"{_params(row, space)}</div>"
        )
    out.append("</div>")
    if len(out) == 2:
        out.insert(1, "<p class='note'>No trial has a report yet.</p>")
    return "".join(out)


def _comparison(dest: Path) -> str:
    out = ["<h2 id='comparison'>Comparison across datasets</h2>"]
    info_f, csv_f = dest / "comparison.json", dest / "comparison.csv"
    if not csv_f.is_file():
        return out[0] + "<p class='note'>No comparison (no trial report finished).</p>"
    info = json.loads(info_f.read_text()) if info_f.is_file() else {}
    table = pd.read_csv(csv_f)
    shared = info.get("shared_classes", [])
    out.append(
        f"<p class='note'>The best trial of each dataset, compared on the {len(shared)} classes they share: "
        f"{_e(', '.join(shared))}."
    )
    not_shared = table.get("classes_not_shared")
    if not_shared is not None and not_shared.fillna("").astype(str).str.len().sum():
        extra = "; ".join(
            f"{d}: {c}" for d, c in zip(table["dataset"], not_shared.fillna(""), strict=True) if c
        )
        out.append(f" Left out (not in every dataset): {_e(extra)}.")
    out.append("</p>")
    cols = [c for c in table.columns if c not in ("classes_not_shared",)]
    out.append(
        "<div class='scroll'><table><thead><tr>"
        + "".join(
            f"<th class='{'l' if i == 0 else ''}'>{_e(c.replace('f1:', 'F1 ').replace('cfg:', ''))}</th>"
            for i, c in enumerate(cols)
        )
        + "</tr></thead><tbody>"
    )
    for _, r in table.iterrows():
        out.append("<tr>" + "".join(f"<td>{_e(_fmt(r[c]))}</td>" for c in cols) + "</tr>")
    out.append("</tbody></table></div>")
    if info.get("differing_keys"):
        out.append(
            f"<p class='note'>How the best configs differ: {_e(', '.join(info['differing_keys']))} "
            "(columns on the right).</p>"
        )
    if (dest / "comparison.png").is_file():
        out.append(f"<div class='wide'>{_img('comparison.png', 'per-class F1 per dataset')}</div>")
    for png in sorted(dest.glob("comparison_*.png")):
        method = png.stem.removeprefix("comparison_")
        out.append(
            f"<h4>{_e(method)}: mean map per class</h4>"
            f"<div class='wide' style='max-width:{150 * max(1, len(shared)) + 120}px'>"
            f"{_img(png.name, method)}</div>"
        )
    return "".join(out)


def _leaderboard(board: pd.DataFrame, space: list[str]) -> str:
    if board.empty:
        return "<h2 id='leaderboard'>Leaderboard</h2><p class='note'>No trials.</p>"
    cols = [
        "dataset",
        "rank",
        "trial_id",
        "status",
        "score",
        *space,
        "best_epoch",
        "epochs_run",
        "wall_seconds",
        "images_per_second",
        "report",
        *[c for c in ("test_accuracy", "test_macro_f1") if c in board.columns],
        *[c for c in board.columns if ":" in c],  # explanation metrics per method, from the fan-out
    ]
    top = board["score"].max() if board["score"].notna().any() else 1.0
    out = [
        "<h2 id='leaderboard'>Leaderboard</h2><p class='note'>Every trial; click a heading to sort. "
        "Highlighted: "
        "reported trials (click the id for details). <a href='leaderboard.csv'>leaderboard.csv</a></p>",
        "<div class='scroll'><table class='sortable'><thead><tr>"
        + "".join(
            f"<th class='{'l' if c in ('dataset', 'trial_id', 'status', 'report') else ''}'>"
            f"{_e(c.split('.')[-1] if '.' in c else c)}</th>"
            for c in cols
        )
        + "</tr></thead><tbody>",
    ]
    for _, r in board.iterrows():
        rep = str(r.get("report") or "")
        cls = "failed" if rep.startswith("failed") or r["status"] == "error" else ("reported" if rep else "")
        cells = []
        for c in cols:
            v = r[c]
            if c == "trial_id" and rep:
                cells.append(f"<td class='l'><a href='#t-{_e(r['dataset'])}-{_e(v)}'>{_e(v)}</a></td>")
            elif c == "status":
                label = v + (" (base)" if str(r.get("base")) == "True" else "")
                cells.append(f"<td class='l' data-v='{_e(v)}'>{_status(label)}</td>")
            elif c == "report":
                cells.append(f"<td class='l'>{_status(rep) if rep else ''}</td>")
            elif c == "score":
                width = 0 if pd.isna(v) or not top else max(0.0, 60 * float(v) / float(top))
                cells.append(
                    f"<td data-v='{_e(v)}'>{_fmt(v)}"
                    f"<span class='bar' style='width:{width:.0f}px'></span></td>"
                )
            else:
                cells.append(
                    f"<td class='{'l' if c == 'dataset' else ''}' data-v='{_e(v)}'>{_e(_fmt(v, 4))}</td>"
                )
        out.append(f"<tr class='{cls}'>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    errors = board[board["error"].fillna("") != ""]
    for _, r in errors.iterrows():
        out.append(
            f"<p class='note'>{_e(r['dataset'])}/{_e(r['trial_id'])} failed in training:</p>"
            f"<div class='error'>{_e(r['error'])}</div>"
        )
    return "".join(out)


def _trial_section(dest: Path, row: dict, full_row, space: list[str], base_row) -> str:
    d, t = row["dataset"], row["trial_id"]
    folder = f"reports/{d}/{t}"
    out = [
        f"<section class='trial' id='t-{_e(d)}-{_e(t)}'><h3>#{_e(row['rank'])} · {_e(t)} "
        f"{_status(row['report'] if row['report'] != 'ok' else row['status'])}</h3>",
        f"<div class='note'>best val {_fmt(row['score'])} at epoch {_e(row['best_epoch'])} of "
        f"{_e(row['epochs_run'])} · {_fmt(row['wall_seconds'], 0)} s · "
        f"{_fmt(row['images_per_second'], 0)} img/s"
        " · highlighted: differs from the base config</div>",
        _params(full_row, space, base_row),
    ]
    error = dest / folder / "error.txt"
    if str(row["report"]).startswith("failed"):
        text = error.read_text() if error.is_file() else row["report"]
        out.append(f"<h4>report failed</h4><div class='error'>{_e(text)}</div></section>")
        return "".join(out)
    s = _summary(dest, d, t)
    if s:
        out.append(
            f"<h4>test metrics ({_e(s.get('split', 'test'))}, n={_e(s['n'])})</h4>"
            f"<p>accuracy <b>{_fmt(s['accuracy'])}</b> · macro-F1 <b>{_fmt(s['macro_f1'])}</b></p>"
        )
        out.append(
            "<div class='scroll' style='max-width:640px'><table><thead><tr><th class='l'>class</th>"
            "<th>precision</th><th>recall</th><th>F1</th><th>support</th></tr></thead><tbody>"
        )
        for cname, m in s["per_class"].items():
            out.append(
                f"<tr><td>{_e(cname)}</td><td>{_fmt(m['precision'])}</td><td>{_fmt(m['recall'])}</td>"
                f"<td>{_fmt(m['f1'])}<span class='bar' style='width:{60 * m['f1']:.0f}px'></span></td>"
                f"<td>{m['support']}</td></tr>"
            )
        out.append("</tbody></table></div>")
    figs = [(f, label) for f, (_, label) in CURVES.items()] + [
        ("test_confusion_matrix.png", "confusion matrix")
    ]
    out.append(
        "<h4>curves and confusion matrix</h4><div class='figs'>"
        + "".join(_img(f"{folder}/{f}", label) for f, label in figs if (dest / folder / f).is_file())
        + "</div>"
    )
    out.append(_metrics_table(_explanation_metrics(dest, d, t)))
    for method_dir in sorted((dest / folder / "xai").glob("*/")):
        if not method_dir.is_dir():
            continue
        out.append(f"<h4>{_e(method_dir.name)}</h4>")
        captions = _captions(method_dir)
        for group, label in (("high_conf", "most confident"), ("low_conf", "least confident")):
            files = sorted((method_dir / group).glob("*.png"))
            if not files:
                continue
            figures = "".join(
                f"<figure>{_img(f'{folder}/xai/{method_dir.name}/{group}/{p.name}', p.stem)}"
                f"<figcaption>{_e(captions.get(f'{group}/{p.name}', ''))}</figcaption></figure>"
                for p in files
            )
            open_attr = " open" if group == "high_conf" else ""
            out.append(
                f"<details{open_attr}><summary>{label} ({len(files)})</summary>"
                f"<div class='gallery'>{figures}</div></details>"
            )
    out.append("</section>")
    return "".join(out)


def _captions(method_dir: Path) -> dict[str, str]:
    f = method_dir / "selection.csv"
    if not f.is_file():
        return {}
    table = pd.read_csv(f)
    return {
        r["file"]: f"{r['path']} · true {r['true']}, predicted {r['pred']} ({r['confidence']:.2f})"
        for _, r in table.iterrows()
    }

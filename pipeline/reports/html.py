"""The report page: report.json's numbers as one self-contained HTML file."""

from __future__ import annotations

import html
from typing import Any

from pipeline.reports.plots import heatmap, histogram, reliability, robustness_plot
from pipeline.reports.stats import number as num
from pipeline.reports.stats import signed

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #1d2430; padding: 0 16px }
h1 { font-size: 22px; margin: 0 0 4px }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #dde3ea; padding-bottom: 4px }
.muted { color: #5c6b7a }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums }
td, th { padding: 3px 10px; border-bottom: 1px solid #edf0f3; text-align: left }
th { background: #f5f7f9; font-weight: 600 }
td.n { text-align: right }
.cards, .plots, .thumbs { display: flex; gap: 14px; flex-wrap: wrap }
.card { border: 1px solid #dde3ea; border-radius: 8px; padding: 10px 14px; min-width: 150px }
.card b { display: block; font-size: 22px }
.thumbs figure { margin: 0; width: 164px; font-size: 12px; overflow-wrap: anywhere }
.thumbs img { border-radius: 4px; display: block; margin-bottom: 3px }
.warn { color: #a33 }
"""


TITLE = "alexnet-eval report"  # what tells this pipeline's pages from others (report.py)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def ci(pair: list[float]) -> str:
    return f"[{num(pair[0], 2)}, {num(pair[1], 2)}]"


def table(
    head: list[str], rows: list[list[Any]], numeric: frozenset[int] | set[int] = frozenset()
) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if j in numeric else ''}>{esc(c)}</td>" for j, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def run_cards(r: dict[str, Any]) -> str:
    cards = [
        ("top-1", f"{num(r['top1'])}", f"{ci(r['top1_ci95'])}"),
        ("top-5", f"{num(r['top5'])}", f"{ci(r['top5_ci95'])}"),
        ("ECE", num(r["ece"], 4), f"{len(r['reliability'])} bins"),
        ("images", r["n_images"], f"{r['n_labeled']} labeled, {r['n_errors']} not scored"),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card">{esc(t)}<b>{esc(v)}</b><span class="muted">{esc(s)}</span></div>'
            for t, v, s in cards
        )
        + "</div>"
    )


def first_run(r: dict[str, Any], shown: list[dict[str, Any]], note: str) -> str:
    """The first run in detail: numbers, plots, classes, confusions, errors, mistakes."""
    restricted = ", outputs restricted to its classes" if r["restricted"] else ""
    parts = [
        f"<h2>{esc(r['dataset'])} · {esc(r['split'])}</h2>",
        run_cards(r),
        f"<p class=muted>label space: {esc(r['label_space'])}{restricted} · "
        f"model {esc(r['model'])}, weights {esc(r['weights'])}</p>",
    ]
    if r["published"]:
        p = r["published"]
        warn = " class=warn" if p["off"] else ""
        parts.append(
            f"<p{warn}>Published ({esc(p['by'])}): top-1 {num(p['top1'])}, top-5 "
            f"{num(p['top5'])}; "
            f"this run {signed(p['top1_diff'])} / {signed(p['top5_diff'])} points.</p>"
        )
    plots = reliability(r["reliability"], r["ece"]) + histogram(r["classes"])
    parts.append(f'<div class="plots">{plots}</div>')
    if r["classes"].get("note"):
        parts.append(f"<h2>Classes</h2><p class=muted>{esc(r['classes']['note'])}</p>")
    for key, title in (("worst", "Worst classes"), ("best", "Best classes")):
        rows = [[c["name"], c["class"], c["n"], num(c["top1"], 1)] for c in r["classes"][key]]
        if rows:
            head = ["class", "id", "images", "top-1 %"]
            parts += [f"<h2>{title}</h2>", table(head, rows, {1, 2, 3})]
    pairs = [[c["true_name"], c["pred_name"], c["count"]] for c in r["confusions"]]
    parts += ["<h2>Most confused pairs</h2>", table(["true", "predicted", "images"], pairs, {2})]
    errors = [[e["index"], e["id"], e["error"]] for e in r["errors"]]
    listed = table(["row", "id", "reason"], errors, {0}) if errors else "<p class=muted>none</p>"
    parts += [f"<h2>Not scored ({r['n_errors']})</h2>", listed]
    return "".join(parts) + mistakes(shown, note)


def mistakes(shown: list[dict[str, Any]], note: str) -> str:
    figures = "".join(
        f'<figure><img src="data:image/jpeg;base64,{t["jpeg"]}" alt="row {t["index"]}">'
        f"row {t['index']} · p={t['confidence']:.2f}<br>{esc(t['id'])}<br>"
        f"{esc(t['label'])} → <b>{esc(t['pred'])}</b></figure>"
        for t in shown
    )
    head = f"<h2>Most confident mistakes</h2><p class=muted>{esc(note)}</p>"
    return f'{head}<div class="thumbs">{figures}</div>'


EXPORT = ["images", "top-1 flips", "top-5 set changes", "largest |Δp| of the source's top-1"]


def export(e: dict[str, Any], shown: list[dict[str, Any]]) -> str:
    """An export against its source: the counts, then the flipped images."""
    head = f"<h2>Export: {esc(e['export'])} against its source {esc(e['source'])}</h2>"
    if "note" in e:
        return f"{head}<p class=muted>{esc(e['note'])}</p>"
    bound = "" if e["max_abs_dprob_exact"] in (True, None) else " (at least)"
    gap = "n/a" if e["max_abs_dprob"] is None else f"{e['max_abs_dprob']:.2g}{bound}"
    row = [e["n"], e["top1_flips"], e["top5_changes"], f"{gap} ({esc(e['max_abs_dprob_id'])})"]
    figures = "".join(
        f'<figure><img src="data:image/jpeg;base64,{t["jpeg"]}" alt="row {t["index"]}">'
        f"row {t['index']} · {esc(t['id'])}<br>{esc(t['source_pred'])} "
        f"{t['source_prob']:.2f} → <b>{esc(t['export_pred'])}</b> {t['export_prob']:.2f}"
        f"</figure>"
        for t in shown
    )
    listed = [
        [f["index"], f["id"], f["label"], f"{f['source_pred']} {f['source_prob']:.3f}",
         f"{f['export_pred']} {f['export_prob']:.3f}"]
        for f in e["flipped"]
    ]  # fmt: skip
    flips = table(["row", "id", "label", "source: top-1 p", "export: top-1 p"], listed, {0})
    return (
        f"{head}<p class=muted>{esc(e['export'])} was exported from {esc(e['exported_from'])}."
        f"</p>{table(EXPORT, [row], {0, 1, 2})}"
        + (f"<h2>Flipped images</h2>{flips}<div class=thumbs>{figures}</div>" if listed else "")
    )


SIDE_BY_SIDE = ["run", "dataset", "split", "label space", "images", "errors"]
SIDE_BY_SIDE += ["top-1 [95% CI]", "top-5 [95% CI]", "ECE"]
PAIRED = ["images", "top-1 agreement", "only first right", "only second right", "McNemar p"]
PAIRED += ["top-1 change [95% CI]"]


def comparisons(report: dict[str, Any]) -> str:
    """Every run in one table, then each paired comparison with the first."""
    rows = [
        [r["dir"], r["dataset"], r["split"], r["label_space"], r["n_images"], r["n_errors"]]
        + [f"{num(r[k])} {ci(r[f'{k}_ci95'])}" for k in ("top1", "top5")]
        + [num(r["ece"], 4)]
        for r in report["runs"]
    ]
    out = ["<h2>All runs, side by side</h2>", table(SIDE_BY_SIDE, rows, {4, 5})]
    return "".join(out + [paired(p) for p in report["paired"]])


def paired(p: dict[str, Any]) -> str:
    """One paired comparison: its test and interval, and the classes that changed most."""
    row = [
        p["n"],
        num(p["agreement"], 4),
        p["first_only"],
        p["second_only"],
        num(p["mcnemar_p"], 3, "g"),
        f"{signed(p['top1_diff'])} {ci(p['top1_diff_ci95'])}",
    ]
    diffs = [[d["name"], d["class"], d["n"], f"{d['top1_diff']:+.1f}"] for d in p["class_diffs"]]
    return (
        f"<h2>Paired: {esc(p['run'])} against {esc(p['with'])}</h2>"
        + table(PAIRED, [row], {0, 2, 3})
        + "<p class=muted>Classes that changed most (top-1 points)</p>"
        + table(["class", "id", "images", "change"], diffs, {1, 2, 3})
    )


def imagenet_c(entries: list[dict[str, Any]]) -> str:
    """Each model's ImageNet-C errors as a heatmap, its CE table and means, what is missing,
    and for AlexNet its difference to the published errors."""
    out = []
    for e in entries:
        rows = [c for c, errors in e["errors"].items() if any(v is not None for v in errors)]
        rows = rows or list(e["errors"])
        pub, mes = e["published"], e["measured"]
        table_rows = [
            [c, num(_x100(pub["ce"][c]), 1), num(_x100(pub["relative_ce"][c]), 1)]
            + ([num(_x100(mes["ce"][c]), 1)] if mes else [])
            for c in rows
        ]
        head = ["corruption", "CE %", "relative CE %"] + (
            ["CE % (measured AlexNet)"] if mes else []
        )
        means = (
            f"mCE {num(_x100(pub['mce']), 1)}, relative mCE {num(_x100(pub['relative_mce']), 1)}, "
            f"clean error {num(_x100(e['clean']), 1)} (by the {esc(pub['by'])})"
        )
        if mes:
            means += f"; by the {esc(mes['by'])}: mCE {num(_x100(mes['mce']), 1)}"
        partial = (
            f"<p class=warn>partial: no result for {esc(', '.join(e['missing']))}; the means "
            f"need every cell</p>"
            if e["partial"]
            else ""
        )
        errors = [e["errors"][c] for c in rows]
        maps = heatmap(rows, errors, "top-1 error (%)", diverging=False)
        if e["versus_published"]:
            shown = [c for c in rows if c in e["versus_published"]]
            deltas = [e["versus_published"][c] for c in shown]
            published = [e["published_errors"][c] for c in shown]
            title = "this run - published, points (published %)"
            maps += heatmap(shown, deltas, title, diverging=True, beside=published)
        out += [
            f"<h2>ImageNet-C: {esc(e['model'])}, {esc(e['source'])}</h2>",
            f"<p>{means}</p>{partial}",
            f'<div class="plots">{maps}</div>',
            table(head, table_rows, {1, 2, 3}),
        ]
    return "".join(out)


def effective_robustness(er: dict[str, Any]) -> str:
    """Each shifted dataset's plot and its table of models; what was left out, and why."""
    if not er or not (er["datasets"] or er["notes"]):
        return ""
    out = ["<h2>Effective robustness</h2>"]
    out.append(
        f"<p class=muted>Top-1 on each dataset against top-1 on {esc(er['val'])}, on "
        f"{esc(er['scale'])}-scaled axes, with the least-squares line through the models "
        f"trained on ImageNet (Taori et al. 2020); zero-shot models (stars) are measured "
        f"against that line, not fitted. Effective robustness: a model's top-1 minus the "
        f"line's at its {esc(er['val'])} top-1, in points.</p>"
    )
    plots, tables = [], []
    for d in er["datasets"]:
        if d["models"]:
            plots.append(robustness_plot(d, er["val"], er["scale"]))
        head = ["#", "model", f"{er['val']} top-1 %", f"{d['dataset']} top-1 %",
                "on the line %", "effective robustness, points"]  # fmt: skip
        rows = [
            [k, r["model"] + (" (zero-shot)" if r.get("zero_shot") else ""),
             num(r["val_top1"], 2), num(r["top1"], 2),
             num(r.get("expected_top1"), 2), num(r.get("effective_robustness"), 2)]
            for k, r in enumerate(d["models"], 1)
        ]  # fmt: skip
        notes = "".join(f"<p class=warn>{esc(n)}</p>" for n in d["left_out"])
        tables.append(f"<h3>{esc(d['dataset'])}</h3>{table(head, rows, {0, 2, 3, 4, 5})}{notes}")
    out.append(f'<div class="plots">{"".join(plots)}</div>' + "".join(tables))
    out += [f"<p class=warn>left out: {esc(n)}</p>" for n in er["notes"]]
    return "".join(out)


def _x100(value: float | None) -> float | None:
    return None if value is None else 100 * value


def render(report: dict[str, Any], pictures: dict[str, list[dict[str, Any]]]) -> str:
    """The page: `pictures` are the thumbnails, the first run's mistakes and each export's
    flipped images by its folder."""
    body = first_run(report["runs"][0], pictures["mistakes"], report["thumbnails"]["note"])
    body += "".join(export(e, pictures.get(e["export"], [])) for e in report.get("exports", []))
    body += imagenet_c(report.get("imagenet_c", []))
    body += effective_robustness(report.get("effective_robustness", {}))
    if len(report["runs"]) > 1:
        body += comparisons(report)
    foot = (
        f"Intervals: {esc(report['interval'])}; differences: "
        f"{esc(report['difference_interval'])}; McNemar's exact test on per-image top-1 "
        f"correctness. Made {esc(report['created'])}."
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{TITLE}</title>"
        f"<style>{CSS}</style></head><body><h1>alexnet-eval report</h1>"
        f"<p class=muted>{esc(report['runs'][0]['dir'])}</p>{body}"
        f"<p class=muted>{foot}</p></body></html>"
    )

"""One self-contained HTML report (plots embedded as data URIs, opens offline) and a markdown summary."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from evaluation.stats import Estimate


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def figure_file(name: str) -> str:
    """The file name a report figure is logged under (`mlflow.log_figure`), so the UI shows it on its own."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") + ".png"


def close(figures: dict[str, Figure]) -> None:
    for figure in figures.values():
        plt.close(figure)


def reliability_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> Figure:
    figure, axis = plt.subplots(figsize=(4.5, 4.2))
    axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    for label, (probs, outcome) in curves.items():
        if outcome.any() and (~outcome).any():
            observed, predicted = calibration_curve(outcome, probs, n_bins=10, strategy="quantile")
            axis.plot(predicted, observed, marker="o", markersize=3, label=label)
    axis.set(xlabel="predicted probability", ylabel="observed frequency", title=title)
    axis.legend(fontsize=7)
    return figure


def roc_pr_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(9, 4))
    for label, (score, positive) in curves.items():
        if positive.any() and (~positive).any():
            fpr, tpr, _ = roc_curve(positive, score)
            precision, recall, _ = precision_recall_curve(positive, score)
            roc.plot(fpr, tpr, label=label)
            pr.plot(recall, precision, label=label)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xscale="log", xlim=(1e-3, 1))
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall")
    roc.legend(fontsize=7)
    return figure


def error_by_age_plot(table: pd.DataFrame) -> Figure:
    figure, axis = plt.subplots(figsize=(9, 3.5))
    axis.bar(table["true_age"], table["mae"], color="#4c72b0", label="MAE")
    axis.plot(table["true_age"], table["bias"], color="#dd8452", marker="o", markersize=3, label="signed bias")
    axis.axhline(0, color="grey", linewidth=0.8)
    axis.set(xlabel="true age (years)", ylabel="years", title="error vs true age")
    axis.tick_params(axis="x", labelrotation=60, labelsize=7)
    axis.legend(fontsize=7)
    return figure


def gate_plot(table: pd.DataFrame, gate: float) -> Figure:
    figure, axis = plt.subplots(figsize=(9, 3.5))
    for kind, colour in (("minor pass", "#c44e52"), ("false rejection", "#4c72b0")):
        part = table[table["kind"] == kind]
        axis.plot(part["true_age"], part["rate"], marker="o", markersize=3, color=colour, label=kind)
        axis.fill_between(part["true_age"], part["low"], part["high"], color=colour, alpha=0.2)
    axis.axvline(gate, color="grey", linestyle="--", linewidth=1)
    axis.set(xlabel="true age (years)", ylabel="rate (95% CI band)", title=f"gate {gate:g} at its operating point")
    axis.legend(fontsize=7)
    return figure


def stream_rules_plot(rules: dict[str, dict], deadline: str) -> Figure:
    """Each stream rule on test streams: recall within the deadline against false interruptions per hour, with
    their intervals, beside the cumulative share of event streams blocked by each second after the onset."""
    figure, (trade, cdf) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, figures in rules.items():
        recall, rate = figures["deadline_recall"][deadline], figures["interruptions_per_hour"]
        if recall["value"] is not None and rate["value"] is not None:
            trade.errorbar(
                rate["value"],
                recall["value"],
                xerr=[[rate["value"] - rate["ci_low"]], [rate["ci_high"] - rate["value"]]],
                yerr=[[recall["value"] - recall["ci_low"]], [recall["ci_high"] - recall["value"]]],
                fmt="o",
                capsize=3,
                label=name,
            )
        delays = np.sort([np.inf if d is None else d for d in figures["seconds_to_block"]])
        if delays.size:
            cdf.step(delays, np.arange(1, delays.size + 1) / delays.size, where="post", label=name)
    trade.set(xlabel="false interruptions per hour of benign stream", ylabel=f"recall within {deadline}")
    cdf.set(xlabel="seconds from the event's onset", ylabel="share of event streams blocked", title="time to block")
    trade.legend(fontsize=7)
    cdf.legend(fontsize=7)
    return figure


def frames_seen_plot(gates: list[dict]) -> Figure:
    """Per gate, the per-person minor pass rate and adult false rejection against the frames seen (95% CI bands)."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for gate in gates:
        frames = [point["frames"] for point in gate["per_stream"]]
        for axis, rate in zip(axes, ("minor_pass_rate", "adult_false_rejection"), strict=True):
            records = [point[rate] for point in gate["per_stream"]]
            values = [np.nan if r["value"] is None else r["value"] for r in records]
            line = axis.plot(frames, values, marker="o", markersize=3, label=f"gate {gate['gate']:g}")[0]
            low = [np.nan if r["ci_low"] is None else r["ci_low"] for r in records]
            high = [np.nan if r["ci_high"] is None else r["ci_high"] for r in records]
            axis.fill_between(frames, low, high, color=line.get_color(), alpha=0.15)
    axes[0].set(xlabel="frames seen", ylabel="share of minors passing", title="minor pass rate per person")
    axes[1].set(xlabel="frames seen", ylabel="share of adults rejected", title="adult false rejection per person")
    axes[0].legend(fontsize=7)
    return figure


def group_bars_plot(table: pd.DataFrame, metric: str) -> Figure:
    part = table[(table["metric"] == metric) & table["value_num"].notna()]
    figure, axis = plt.subplots(figsize=(9, 3.8))
    labels = [f"{a}: {v}" for a, v in zip(part["attribute"], part["value"], strict=True)]
    values = part["value_num"].to_numpy(float)
    errors = np.vstack(
        [
            values - part["low"].fillna(part["value_num"]).to_numpy(float),
            part["high"].fillna(part["value_num"]).to_numpy(float) - values,
        ]
    )
    colours = ["#c44e52" if f else "#4c72b0" for f in part["flagged"]]
    axis.bar(range(len(values)), values, yerr=errors, color=colours, capsize=2)
    axis.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
    axis.set(title=f"{metric} per group (red: CI excludes the overall value)")
    return figure


def _table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="not measurable", border=0)


def estimate_text(row) -> str:
    """A metrics-table row as `Estimate.text` writes it: `value [low, high] (n=...)`, or why it is not measurable."""
    value, low, high = (None if pd.isna(row[key]) else float(row[key]) for key in ("value", "ci_low", "ci_high"))
    return Estimate(value, low, high, int(row["n"]), row["reason"]).text()


def _readable(metrics: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "metric": metrics["metric"],
            "estimate (95% CI)": [estimate_text(row) for _, row in metrics.iterrows()],
            "unit": metrics["unit"],
            "meaning": metrics["meaning"],
        }
    )


def write_report(
    path: Path,
    title: str,
    context: list[str],
    metrics: pd.DataFrame,
    sections: dict[str, pd.DataFrame],
    figures: dict[str, Figure],
    verdict: str | None = None,
    scorecard: pd.DataFrame | None = None,
    headline: list[str] | None = None,
    versus: tuple[str, pd.DataFrame | None] | None = None,
) -> tuple[Path, Path]:
    """Write `<path>.html` and `<path>.md`; returns both paths.

    A reviewer reads the decision first: the verdict and scorecard, then the `headline` metrics (keys of
    `metrics`, `evaluation.glossary.metrics_table`'s frame) with units, and `versus`: the comparison with
    the champion (a sentence, and `childsafe compare`'s table when there is one). The full metric list comes last,
    collapsed. `context` lines are markdown; links in them become HTML links.
    """
    readable = _readable(metrics)
    top = readable[readable["metric"].isin(headline)] if headline is not None else readable
    lead = []
    if verdict is not None:
        colour = "#1a7f37" if verdict.startswith("PASS") else "#cf222e"
        lead.append(
            f'<p id="verdict" style="font-size:1.2em;color:{colour}"><strong>{html.escape(verdict)}</strong></p>'
        )
    if scorecard is not None:
        lead += ["<h2>Safety scorecard</h2>", _table_html(scorecard)]
    if versus is not None:
        lead += ['<h2 id="versus-champion">Against the champion</h2>', f"<p>{html.escape(versus[0])}</p>"]
        lead += [] if versus[1] is None else [_table_html(versus[1])]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        *lead,
        "<ul>",
        *[f"<li>{_linked(c)}</li>" for c in context],
        "</ul>",
        "<h2>Headline metrics</h2>",
        _table_html(top),
    ]
    for name, figure in figures.items():
        body += [f"<h2>{html.escape(name)}</h2>", f'<img alt="{html.escape(name)}" src="{_png(figure)}">']
    for name, frame in sections.items():
        body += [f"<h2>{html.escape(name)}</h2>", _table_html(frame)]
    body += [
        f'<details id="all-metrics"><summary><strong>All {len(readable)} metrics</strong> (as logged to MLflow; '
        "units and meanings from docs/metric-glossary.md)</summary>",
        _table_html(readable),
        "</details>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
        "img{max-width:100%}"
    )
    html_path = path.with_suffix(".html")
    # A self-check a headless browser can read back: how many embedded images actually decoded.
    check = (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.dataset.imagesTotal=i.length;"
        "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;});</script>"
    )
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style>{check}</head><body>{''.join(body)}</body></html>"
    )
    markdown = [f"# {title}", ""]
    if verdict is not None:
        markdown += [f"**{verdict}**", ""]
    if scorecard is not None:
        markdown += ["## Safety scorecard", "", scorecard.to_markdown(index=False), ""]
    if versus is not None:
        markdown += ["## Against the champion", "", versus[0], ""]
        markdown += [] if versus[1] is None else [versus[1].to_markdown(index=False), ""]
    markdown += [*[f"- {c}" for c in context], "", "## Headline metrics", "", top.to_markdown(index=False)]
    for name, frame in sections.items():
        markdown += ["", f"## {name}", "", frame.to_markdown(index=False) if len(frame) else "(empty)"]
    markdown += ["", f"## All {len(readable)} metrics", "", readable.to_markdown(index=False)]
    md_path = path.with_suffix(".md")
    md_path.write_text("\n".join(markdown) + "\n")
    return html_path, md_path


MARKDOWN_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _linked(line: str) -> str:
    """A markdown context line as HTML: escaped text, with its `[text](target)` links as anchors."""
    parts, last = [], 0
    for found in MARKDOWN_LINK.finditer(line):
        parts.append(html.escape(line[last : found.start()]))
        parts.append(f'<a href="{html.escape(found.group(2))}">{html.escape(found.group(1))}</a>')
        last = found.end()
    return "".join(parts) + html.escape(line[last:])

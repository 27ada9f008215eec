"""Compare evaluate runs for a reviewer: `childsafe compare childsafe-age_synthetic@champion ...@candidate`.

Each reference is a run id, a model version by alias (`NAME@ALIAS`) or by number (`NAME/VERSION`),
and resolves to the evaluate run that measured it. A version's run is its export run; the evaluate
run compared is the newest finished one of the same calibration (the export run's parent, which
evaluate also runs under). A calibrate run resolves to its newest evaluate run, a train run to the
newest evaluate run of it or of one of its calibrate runs.

The criteria are promotion's own (`tracking.registry.figures`): the headline, each operating point's
test miss-rate upper bound, false-alarm rate and near-gate pass rates, and the worst slice ratio,
each judged in its own direction. A difference is significant when it exceeds the two runs' 95%
interval half-widths combined in quadrature (as for independent estimates). A figure that lacks an
interval in either run (a miss-rate upper bound is itself an interval's end) is judged by promotion's
tolerance for it in configs/promote.yaml instead. Within the margin: "no significant difference".
The first run is the baseline; every other run is judged against it.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from core.errors import WorkbenchError
from core.hydra_app import console
from core.paths import CONFIG_DIR
from evaluation.glossary import METRICS_TABLE
from tracking.mlflow_run import PARENT_TAG, default_tracking_uri, finished_runs_under
from tracking.registry import Figure, figures, format_figure, worsening

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

BETTER, WORSE, SAME, UNMEASURED = "better", "worse", "no significant difference", "not comparable"
HEADLINES = {"age": "mae", "content": "accuracy"}
RULE = " ".join((__doc__ or "").split("\n\n")[2].split())  # the verdict rule, as the docstring states it


@dataclass(frozen=True)
class Measured:
    """One run's figure and its 95% interval, when it has one."""

    value: float | None
    low: float | None = None
    high: float | None = None

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2

    def text(self) -> str:
        if self.value is None:
            return "not measured"
        interval = f" [{format_figure(self.low)}, {format_figure(self.high)}]" if self.half_width is not None else ""
        return format_figure(self.value) + interval


@dataclass(frozen=True)
class Evaluated:
    """A reviewer's reference and the evaluate run it resolved to."""

    reference: str
    run: Run
    via: str  # how the reference led to this run, in words
    measured: dict[str, Measured] = field(default_factory=dict)  # its metrics table: key -> value and interval


def _run(client: MlflowClient, run_id: str, reference: str) -> Run:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise WorkbenchError(
            f"{reference}: no MLflow run {run_id} in {default_tracking_uri()}. Give an evaluate run id, a model "
            "version as NAME@ALIAS or NAME/VERSION, or check MLFLOW_TRACKING_URI."
        ) from error


def _version_run_id(client: MlflowClient, reference: str) -> tuple[str, str]:
    """The export run of `NAME@ALIAS` or `NAME/VERSION`, and the version's number."""
    from mlflow.exceptions import MlflowException

    by_alias = "@" in reference
    name, handle = reference.rsplit("@" if by_alias else "/", 1)
    lookup = client.get_model_version_by_alias if by_alias else client.get_model_version
    try:
        version = lookup(name, handle)
    except MlflowException as error:
        try:
            aliases = dict(client.get_registered_model(name).aliases)
        except MlflowException:
            raise WorkbenchError(f"{reference}: no registered model {name!r} in {default_tracking_uri()}.") from error
        known = ", ".join(f"{alias} (v{number})" for alias, number in sorted(aliases.items())) or "none"
        raise WorkbenchError(
            f"{reference}: model {name!r} has no {'alias' if by_alias else 'version'} {handle!r}. Its aliases: {known}."
        ) from error
    if not version.run_id:
        raise WorkbenchError(f"{reference}: v{version.version} of {name!r} names no run, so nothing evaluated it.")
    return version.run_id, version.version


def evaluate_run(client: MlflowClient, run: Run, reference: str) -> Evaluated:
    """The evaluate run that measured `run`: itself, or the newest finished one of the same calibration."""
    stage, run_id = run.data.tags.get("stage"), run.info.run_id
    if stage == "evaluate":
        return Evaluated(reference, run, f"evaluate run {run_id}")
    if stage == "export":
        parents, hint = [run.data.tags.get(PARENT_TAG, "")], f"calibration_run={run.data.tags.get(PARENT_TAG)}"
    elif stage == "calibrate":
        parents, hint = [run_id], f"calibration_run={run_id}"
    elif stage == "train":
        calibrations = finished_runs_under(client, run.info.experiment_id, "calibrate", [run_id])
        parents = [run_id, *(c.info.run_id for c in calibrations)]
        hint = f"calibration_run=<a calibrate run of it> (calibrate it first: `childsafe calibrate run_id={run_id}`)"
    else:
        raise WorkbenchError(
            f"{reference}: run {run_id} is not a childsafe stage run (its tag stage={stage!r}). Give an "
            "evaluate run, a model version (NAME@ALIAS or NAME/VERSION), or its train, calibrate or export run."
        )
    found = finished_runs_under(client, run.info.experiment_id, "evaluate", parents)
    if not found:
        raise WorkbenchError(
            f"{reference}: {stage} run {run_id} has no finished evaluate run of the same calibration to compare. "
            f"Evaluate it first: `childsafe evaluate {hint}`."
        )
    return Evaluated(reference, found[0], f"{stage} run {run_id} -> evaluate run {found[0].info.run_id}")


def resolve(client: MlflowClient, reference: str) -> Evaluated:
    """A run id, `NAME@ALIAS` or `NAME/VERSION` (run ids hold neither `@` nor `/`) as its evaluate run."""
    if "@" not in reference and "/" not in reference:
        evaluated = evaluate_run(client, _run(client, reference, reference), reference)
    else:
        run_id, version = _version_run_id(client, reference)
        evaluated = evaluate_run(client, _run(client, run_id, reference), reference)
        evaluated = replace(evaluated, via=f"v{version}, {evaluated.via}")
    return replace(evaluated, measured=read_measured(client, evaluated))


def read_measured(client: MlflowClient, evaluated: Evaluated) -> dict[str, Measured]:
    """Every figure of an evaluate run with its 95% interval, from its metrics table (its metrics hold
    the values alone)."""
    import tempfile

    from mlflow.exceptions import MlflowException

    run_id = evaluated.run.info.run_id
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = client.download_artifacts(run_id, METRICS_TABLE, folder)
        except (MlflowException, OSError) as error:
            raise WorkbenchError(
                f"{evaluated.reference}: evaluate run {run_id} has no {METRICS_TABLE}, so its intervals are unknown "
                "(it was logged by an older workbench). Evaluate it again: `childsafe evaluate "
                f"calibration_run={evaluated.run.data.tags.get(PARENT_TAG, '<its calibrate run>')}`."
            ) from error
        table = json.loads(Path(path).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return {row["metric"]: Measured(row["value"], row["ci_low"], row["ci_high"]) for row in rows}


def _measured(measured: dict[str, Measured], key: str) -> Measured:
    return measured.get(key, Measured(None))


def run_figures(evaluated: Evaluated) -> dict[str, tuple[Figure, Measured]]:
    """Promotion's criteria for one evaluate run, from its metrics table, each with its interval where it has one."""
    run = evaluated.run
    task = run.data.tags.get("task")
    if task not in HEADLINES:
        raise WorkbenchError(
            f"{evaluated.reference}: evaluate run {run.info.run_id} has task tag {task!r}, not one of "
            f"{', '.join(HEADLINES)}: it was not written by `childsafe evaluate`."
        )
    prefix, headline = f"test/{task}/", HEADLINES[task]  # what promotion judges: the test split
    metrics = {key.removeprefix(prefix): value for key, value in evaluated.measured.items() if key.startswith(prefix)}
    sources = {f"headline {headline}": _measured(metrics, headline)}
    points = {}
    rates = ("minor_pass_rate", "adult_false_rejection") if task == "age" else ("recall", "false_alarm_rate")
    for point in sorted({key.split("/")[0] for key in metrics if re.fullmatch(rf"[^/]+/{rates[1]}", key)}):
        miss = _measured(metrics, f"{point}/{rates[0]}")
        # Content logs recall: its interval's lower end is the miss rate's upper end.
        upper = miss.high if task == "age" else (None if miss.low is None else 1 - miss.low)
        years = {
            found.group(1): _measured(metrics, key)
            for key in metrics
            if (found := re.fullmatch(rf"{re.escape(point)}/pass_rate_age(\d+)", key))
        }
        false_alarm = _measured(metrics, f"{point}/{rates[1]}")
        points[point] = {
            "test_miss_rate_ci_high": upper,
            "test_false_alarm_rate": false_alarm.value,
            "near_gate": {year: rate.value for year, rate in sorted(years.items(), key=lambda item: int(item[0]))},
        }
        sources[f"{point}: test miss-rate upper bound"] = Measured(upper)
        sources[f"{point}: test false-alarm rate"] = false_alarm
        sources |= {f"{point}: test pass rate at age {year}": rate for year, rate in years.items()}
    ratios = [
        ratio
        for key, ratio in metrics.items()
        if re.fullmatch(rf"disparity/[^/]+/{headline}_ratio", key) and ratio.value is not None
    ]
    sources["worst slice ratio"] = max(ratios, key=lambda ratio: ratio.value, default=Measured(None))
    record = {
        "headline": {"name": headline, "value": sources[f"headline {headline}"].value},
        "points": points,
        "worst_slice_ratio": sources["worst slice ratio"].value,
    }
    return {criterion: (figure, sources[criterion]) for criterion, figure in figures(record).items()}


@dataclass(frozen=True)
class Verdict:
    verdict: str
    delta: float | None
    rule: str


def judge(figure: Figure, new: Measured, old: Measured, tolerances: dict[str, float]) -> Verdict:
    """Better, worse or no significant difference, in the figure's direction (see the module docstring)."""
    if new.value is None or old.value is None:
        return Verdict(UNMEASURED, None, f"not measured in {'this run' if new.value is None else 'the baseline'}")
    if new.half_width is not None and old.half_width is not None:
        margin = math.hypot(new.half_width, old.half_width)
        rule = f"95% intervals in quadrature: margin {margin:.4g}"
    else:
        margin = tolerances[figure.tolerance]
        rule = f"no interval: tolerances.{figure.tolerance}={margin:g}"
    change = worsening(replace(figure, value=new.value), replace(figure, value=old.value))
    verdict = WORSE if change > margin else BETTER if change < -margin else SAME
    return Verdict(verdict, new.value - old.value, rule)


def letter(index: int) -> str:
    """Runs are columns A, B, C, ... in the order given; the header lines say which reference each is."""
    return chr(ord("A") + index)


def comparison_table(evaluated: list[Evaluated], tolerances: dict[str, float]) -> pd.DataFrame:
    """One row per criterion: its direction, the baseline's (A) figure, then each other run's figure, delta, verdict
    and rule; with rows in the baseline's order, then any criterion only a later run reports."""
    measured = [run_figures(e) for e in evaluated]
    criteria = list(dict.fromkeys(criterion for figures_of in measured for criterion in figures_of))
    base, labels = measured[0], [letter(index) for index in range(len(evaluated))]
    figure_of = {criterion: pair[0] for figures_of in measured for criterion, pair in figures_of.items()}
    rows = []
    for criterion in criteria:
        old = base.get(criterion, (None, Measured(None)))[1]
        figure = figure_of[criterion]
        row = {"criterion": criterion, "worse if": "higher" if figure.higher_is_worse else "lower", "A": old.text()}
        for label, figures_of in zip(labels[1:], measured[1:], strict=True):
            new = figures_of.get(criterion, (None, Measured(None)))[1]
            verdict = judge(figure, new, old, tolerances)
            row |= {
                label: new.text(),
                f"{label} - A": "n/a" if verdict.delta is None else f"{verdict.delta:+.4g}",
                f"verdict {label}": verdict.verdict,
                f"rule {label}": verdict.rule,
            }
        rows.append(row)
    return pd.DataFrame(rows)


def _header(evaluated: list[Evaluated]) -> list[str]:
    return [
        f"{letter(index)}{' (baseline)' if index == 0 else ''}: {e.reference} ({e.via}, started "
        f"{pd.Timestamp(e.run.info.start_time, unit='ms'):%Y-%m-%d %H:%M:%S} UTC)"
        for index, e in enumerate(evaluated)
    ]


def markdown(table: pd.DataFrame, evaluated: list[Evaluated]) -> str:
    title = f"# {' vs '.join(e.reference for e in evaluated[1:])} against {evaluated[0].reference}"
    notes = [f"- {line}" for line in _header(evaluated)]
    return "\n".join([title, "", *notes, "", table.to_markdown(index=False, disable_numparse=True), "", RULE, ""])


VERDICT_COLOURS = {BETTER: "#1a7f37", WORSE: "#cf222e", SAME: "#57606a", UNMEASURED: "#9a6700"}


def html_page(table: pd.DataFrame, evaluated: list[Evaluated]) -> str:
    """A self-contained page, verdicts coloured, that MLflow's artefact viewer renders."""
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in table.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='{'verdict' if str(column).startswith('verdict ') else ''}' "
            f"style='color:{VERDICT_COLOURS.get(value, 'inherit')}'>{html.escape(str(value))}</td>"
            for column, value in row.items()
        )
        + "</tr>"
        for _, row in table.iterrows()
    )
    title = html.escape(markdown(table, evaluated).splitlines()[0].removeprefix("# "))
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1300px;margin:auto;padding:1em;color:#1f2328}"
        "table{border-collapse:collapse;font-size:13px}th{background:#f6f8fa;text-align:left}"
        "td,th{padding:4px 10px;border-bottom:1px solid #d0d7de;vertical-align:top}td.verdict{font-weight:600}"
    )
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in _header(evaluated))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
        f"<body><h1>{title}</h1><ul>{notes}</ul><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>{html.escape(RULE)}</p></body></html>"
    )


def show(table: pd.DataFrame, evaluated: list[Evaluated], text: str) -> None:
    """A rich table sized to the terminal; piped, the markdown itself, so no name is ever cut."""
    if not console.is_terminal:
        print(text)
        return
    view = Table(title="\n".join(_header(evaluated)), title_justify="left")
    for column in table.columns:
        view.add_column(str(column), overflow="fold")
    for _, row in table.iterrows():
        view.add_row(*(f"[{VERDICT_COLOURS[v]}]{v}[/]" if v in VERDICT_COLOURS else str(v) for v in row))
    console.print(view)


def promotion_tolerances() -> dict[str, float]:
    """Promotion's tolerances (configs/promote.yaml), so a figure without intervals is judged as promote judges it."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "promote.yaml").tolerances)


def compare(cfg: DictConfig) -> pd.DataFrame:
    from mlflow import MlflowClient

    references = [str(reference) for reference in cfg.runs]
    if len(references) < 2:
        raise WorkbenchError(
            f"compare needs at least two runs to compare, got {len(references)} ({', '.join(references) or 'none'}). "
            "Give them as arguments, the baseline first: "
            "`childsafe compare childsafe-age_synthetic@champion childsafe-age_synthetic@candidate` "
            "(each a run id, NAME@ALIAS or NAME/VERSION)."
        )
    client = MlflowClient(default_tracking_uri())
    evaluated = [resolve(client, reference) for reference in references]
    table = comparison_table(evaluated, promotion_tolerances())
    text = markdown(table, evaluated)
    show(table, evaluated, text)
    page = html_page(table, evaluated)
    output = Path(cfg.paths.output_dir)
    (output / "comparison.md").write_text(text)
    (output / "comparison.html").write_text(page)
    newest = max(evaluated, key=lambda e: e.run.info.start_time).run.info.run_id
    stem = "comparison/" + "-vs-".join(e.run.info.run_id[:8] for e in evaluated)
    client.log_text(newest, text, f"{stem}.md")
    client.log_text(newest, page, f"{stem}.html")
    console.print(f"written: {output / 'comparison.md'} and comparison.html; logged to run {newest} under {stem}.*")
    return table

"""Evaluate a trained (and, when there is one, calibrated) model: `childsafe evaluate train_task=age_synthetic`.

Gate analysis NIST-style, content metrics, confidence intervals on every rate, fairness slices
with flags, robustness under capture degradations, per-sample predictions, and an HTML report.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from omegaconf import DictConfig

from calibration.age import AgeCalibration
from calibration.content import ContentCalibration
from calibration.metrics import ECE_BINNING
from calibration.operating_points import row_units
from calibration.state import CalibrationState
from core.errors import WorkbenchError
from core.hydra_app import show_metrics
from evaluation import report
from evaluation.age import age_metrics, interval_coverage, mae, minor_pass_rate
from evaluation.content import accuracy, content_metrics, point_outcomes, point_recall, protected
from evaluation.fairness import disparity_ratio, fairness_table
from evaluation.glossary import METRICS_TABLE, metric_values, metrics_table
from evaluation.robustness import PERTURBATIONS
from evaluation.scorecard import scorecard, verdict_line
from evaluation.stats import Estimate, not_measurable, proportion
from export.parity import reference_outputs
from export.pipeline import load_calibration
from tracking.mlflow_run import (
    DESCRIPTION_TAG,
    append_description,
    default_tracking_uri,
    log_dataset_inputs,
    log_metrics,
    run_link,
    stage_run,
)
from tracking.runs import resolve_trained_run

# What the report shows first, after the scorecard: the headline and each operating point's figures.
HEADLINE = re.compile(
    r"mae|accuracy|interval\d+/coverage|disparity/.*|fairness/flagged_slices"
    r"|gate\d+/(minor_pass_rate|adult_false_rejection|pass_rate_age\d+)|recall_\w+/(recall|false_alarm_rate|precision_at_base_rate)"
)


def identity_calibration(module, unsafe_classes: list[str]) -> CalibrationState:
    """An uncalibrated model seen through the same code path: temperature 1, no operating points."""
    if module.task == "content":
        classes = list(module.hparams.classes)
        content = ContentCalibration.identity(classes, [c for c in unsafe_classes if c in classes])
        return CalibrationState("content", None, "", 0.95, content=content)
    age = AgeCalibration.identity(module.hparams.gates, module.hparams.max_age)
    return CalibrationState("age", None, "", 0.95, age=age)


def predictions_frame(
    module, state: CalibrationState, images: np.ndarray, rows: pd.DataFrame, coverage: float, device: str | None = None
) -> pd.DataFrame:
    """One row per image: ids, labels, attributes, every model output, and each operating-point decision."""
    outputs = reference_outputs(module, state, images, coverage, device)
    frame = rows.drop(columns=["sha256", "licence", "path"], errors="ignore").reset_index(drop=True)
    if state.task == "content":
        for index, name in enumerate(state.content.classes):
            frame[f"p_{name}"] = outputs["probabilities"][:, index]
        frame["unsafe_score"] = outputs["unsafe_score"]
    else:
        frame["expected_age"] = outputs["expected_age"]
        for index, gate in enumerate(state.age.gates):
            frame[f"p_below_{gate.gate:g}"] = outputs["prob_below"][:, index]
        if "interval_low" in outputs:
            frame["interval_low"], frame["interval_high"] = outputs["interval_low"], outputs["interval_high"]
    for index, point in enumerate(state.operating_points):
        frame[f"block_{point.name}"] = outputs["scores"][:, index] >= point.threshold
    return frame


def headline_functions(state: CalibrationState) -> dict:
    """The metrics fairness slicing and robustness repeat, as functions of a predictions frame."""
    if state.task == "age":
        functions = {"mae": mae}
        if state.age.intervals:
            functions["interval_coverage"] = interval_coverage
        for gate in (g.gate for g in state.age.gates):
            # Predicted age >= T lets a person through at challenge age T: no threshold absorbs a group's shift.
            functions[f"gate{gate:g}/challenge_age{gate:g}/minor_pass_rate"] = lambda f, g=gate: proportion(
                f["expected_age"].to_numpy()[f["age"].to_numpy() < g] >= g, "minors"
            )
        for point in state.operating_points:
            functions[f"{point.name}/minor_pass_rate"] = lambda f, g=point.gate, c=f"block_{point.name}": (
                minor_pass_rate(f, g, c)
            )
        return functions
    classes, unsafe = state.content.classes, state.content.unsafe_classes
    functions = {
        "accuracy": lambda f: accuracy(f[[f"p_{c}" for c in classes]].to_numpy(), f["label"].to_numpy(), row_units(f))
    }
    for point in state.operating_points:
        functions[f"{point.name}/recall"] = lambda f, p=point: point_recall(
            *point_outcomes(f, p.name, p.target, p.labels, classes, unsafe)
        )
    return functions


def _positives(frame: pd.DataFrame, target: str, state: CalibrationState) -> np.ndarray:
    return protected(frame["label"].to_numpy(), target, state.content.classes, state.content.unsafe_classes)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    if cfg.calibration_run or cfg.calibration_state:
        state, calibration_run = load_calibration(cfg, output_dir / "source")
        run_id, checkpoint = state.train_run_id, None if state.train_run_id else state.checkpoint
    else:
        state, calibration_run, run_id, checkpoint = None, None, cfg.run_id, cfg.checkpoint
    calibrated = state is not None
    trained = resolve_trained_run(run_id, checkpoint, output_dir / "source", train_task=cfg.train_task)
    module, datamodule = trained.load_model().eval(), trained.datamodule()
    state = state or identity_calibration(module, list(cfg.evaluation.unsafe_classes))
    rows = datamodule.split_manifest(cfg.split)
    if rows.empty:
        raise WorkbenchError(
            f"split={cfg.split} has no rows in this dataset: not measurable. "
            f"Splits present: {sorted(datamodule.load().manifest['split'].unique())}."
        )
    images = np.asarray(datamodule.load().images[rows.index.to_numpy()])
    coverage = state.interval_coverage(cfg.evaluation.coverage)
    frame = predictions_frame(module, state, images, rows, coverage, cfg.device)

    if state.task == "age":
        metrics, tables = age_metrics(
            frame,
            [g.gate for g in state.age.gates],
            coverage,
            calibrated=calibrated,
            near_gate={p.gate: [year["age"] for year in p.test.get("near_gate", [])] for p in state.operating_points},
        )
    else:
        metrics, tables = content_metrics(
            frame,
            state.content.classes,
            state.content.unsafe_classes,
            cfg.evaluation.base_rate,
            {point.name: (point.target, point.labels) for point in state.operating_points},
            calibrated=calibrated,
        )
    functions = headline_functions(state)
    overall = {name: function(frame) for name, function in functions.items()}
    attributes = list(cfg.evaluation.slice_attributes or datamodule.slice_attributes)
    fairness = fairness_table(frame, attributes, functions, overall)
    headline_name = "mae" if state.task == "age" else "accuracy"
    per_rows = _per_rows(frame, state)
    for attribute in attributes:
        metrics[f"disparity/{attribute}/{headline_name}_ratio"] = (
            disparity_ratio(frame, attribute, per_rows)
            if attribute in frame.columns
            else not_measurable(f"the data has no '{attribute}' column")
        )
    robustness = robustness_table(module, state, images, rows, coverage, functions, overall, cfg.device)

    frame.to_parquet(output_dir / "predictions.parquet", index=False)
    fairness.to_csv(output_dir / "fairness.csv", index=False)
    robustness.to_csv(output_dir / "robustness.csv", index=False)
    figures = figures_for(frame, state, tables, fairness, headline_name)
    synthetic = datamodule.synthetic
    context = [
        f"Model: {trained.task} run {_run_reference(trained.run_id)}; calibration run: "
        f"{_run_reference(calibration_run) if calibration_run else 'none (uncalibrated)'}.",
        f"Data: {datamodule.dataset_name}, split '{cfg.split}' ({len(frame)} images, "
        f"{frame['subject_id'].nunique()} subjects), digest {datamodule.load().digest[:16]}.",
        "This data is SYNTHETIC: the figures validate the pipeline, not real-world accuracy."
        if synthetic
        else "Data: licensed dataset (see its dataset card).",
        "Operating-point pass rates and recalls count people (scenes for content), a unit missed when any image "
        "is, with exact 95% Clopper-Pearson intervals over units, as the contract does; other rates count images.",
        "MAE, accuracy, false-alarm and false-rejection rates, AUC and ratios carry a 95% percentile bootstrap "
        "resampling whole subjects (scenes for content), widened where needed to contain the value.",
        ECE_BINNING
        + ("" if calibrated else " Probabilities are uncalibrated here: their scores are named *_uncalibrated."),
    ]
    flagged = fairness[fairness["flagged"]]
    sections = {f"Table: {name}": table for name, table in tables.items()}
    sections |= {
        "Flagged slices (worse than overall: the 95% interval excludes the overall value on the harmful side)": (
            flagged.drop(columns=["value_num", "low", "high"])
        ),
        "Fairness slices (all)": fairness.drop(columns=["value_num", "low", "high"]),
        "Robustness (fixed severities)": robustness,
    }
    card = scorecard(state) if calibrated else None
    verdict = verdict_line(card) if card is not None else None
    prefix = f"{cfg.split}/{state.task}"
    table = metrics_table(
        {f"{prefix}/{name}": estimate for name, estimate in metrics.items()}
        | {f"{prefix}/fairness/flagged_slices": Estimate(float(len(flagged)), n=len(fairness))}
    )
    headline = [key for key in table["metric"] if HEADLINE.fullmatch(key.removeprefix(f"{prefix}/"))]
    with stage_run("evaluate", calibration_run or trained.run_id, state.task, trained.experiment) as (
        client,
        mlflow_run,
    ):
        numbers = log_figures(client, mlflow_run, table)
        record_inputs(client, mlflow_run, cfg, calibration_run, trained.run_id, datamodule, coverage, attributes)
        versus = champion_deltas(client, cfg.champion, mlflow_run) if cfg.split == "test" else None
        html_path, md_path = report.write_report(
            output_dir / "report", f"Evaluation: {trained.task} model", context, table, sections, figures, verdict,
            card, headline, versus,
        )  # fmt: skip
        for name, figure in figures.items():
            client.log_figure(mlflow_run, figure, f"evaluation/figures/{report.figure_file(name)}")
        report.close(figures)
        for artefact in (
            html_path,
            md_path,
            output_dir / "predictions.parquet",
            output_dir / "fairness.csv",
            output_dir / "robustness.csv",
        ):
            client.log_artifact(mlflow_run, str(artefact), "evaluation")
        describe_evaluation(client, mlflow_run, trained.run_id, calibration_run, card, verdict, html_path.name, versus)
    show_metrics(
        {k: v for k, v in numbers.items() if "/challenge_age" not in k and "_ci_" not in k},
        f"evaluation of {state.task} on {cfg.split}",
        {"report": str(html_path), "flagged slices": str(len(flagged)), "mlflow run": mlflow_run},
    )
    return numbers


def champion_deltas(client, champion: str | None, run_id: str) -> tuple[str, pd.DataFrame | None]:
    """This run against the champion, criterion by criterion as `childsafe compare` judges them, or why not."""
    from mlflow.exceptions import MlflowException

    from tracking import compare

    if not champion:
        return "No champion to compare with (champion=null).", None
    try:
        baseline = compare.resolve(client, champion)
    except (WorkbenchError, MlflowException) as error:
        return f"No comparison with the champion: {error}", None
    if baseline.run.info.run_id == run_id:
        return f"This run is the champion's own evaluation ({champion}).", None
    this = compare.resolve(client, run_id)
    table = compare.comparison_table([baseline, this], compare.promotion_tolerances())
    verdicts = table["verdict B"].value_counts()
    summary = ", ".join(f"{count} {verdict}" for verdict, count in verdicts.items())
    return f"Against the champion {champion} ({baseline.via}; A is the champion, B this run): {summary}.", table


def log_figures(client, run_id: str, table: pd.DataFrame) -> dict[str, float]:
    """Values (and the headline bounds) as metrics, every interval, unit and meaning in the metrics table."""
    numbers, unmeasured = metric_values(table)
    log_metrics(client, run_id, numbers, unmeasured)
    client.log_table(run_id, data=table, artifact_file=METRICS_TABLE)
    return numbers


def _run_reference(run_id: str | None) -> str:
    """A run id as a markdown link to the MLflow UI when a tracking server is known, else the bare id
    (a hash route would not resolve from inside the artefact viewer that shows the report)."""
    if not run_id:
        return "none (a checkpoint)"
    if not default_tracking_uri().startswith(("http://", "https://")):
        return run_id
    return f"[{run_id}]({run_link(MlflowClient(), run_id)})"


def record_inputs(
    client, run_id: str, cfg: DictConfig, calibration_run, train_run, datamodule, coverage, attributes
) -> None:
    """What was measured, and how: the settings as parameters and the split as an `mlflow.data` input."""
    settings = cfg.evaluation
    params = {
        "split": cfg.split,
        "coverage": coverage,
        "base_rate": settings.base_rate,
        "slice_attributes": ",".join(attributes) or "none",
        "calibration_run": calibration_run or "none (uncalibrated)",
        "train_run": train_run or "none (a checkpoint)",
        "device": cfg.device,
    }
    for key, value in params.items():
        client.log_param(run_id, key, value)
    cached = datamodule.load()
    contexts = {cfg.split: "testing" if cfg.split == "test" else cfg.split}
    log_dataset_inputs(
        client, run_id, cached.manifest, cached.manifest_path, datamodule.dataset_name, cached.digest,
        datamodule.target, contexts,
    )  # fmt: skip


def describe_evaluation(
    client,
    run_id: str,
    train_run_id: str | None,
    calibration_run: str | None,
    card,
    verdict: str | None,
    report: str,
    versus: tuple[str, pd.DataFrame | None] | None,
) -> None:
    """The scorecard as an MLflow table, the verdict as the run's description, and a line on the train run."""
    report_link = f"[the report]({run_link(client, run_id, f'evaluation/{report}')})"
    lines = [f"**Safety verdict: {verdict}**" if verdict else "**Uncalibrated evaluation: no safety verdict.**", ""]
    if versus is not None:
        lines += [versus[0], ""]
    if card is not None:
        client.log_table(run_id, data=card, artifact_file="evaluation/scorecard.json")
        lines.append(f"Scorecard: `evaluation/scorecard.json` (one row per operating point); {report_link}.")
    else:
        lines.append(f"See {report_link}.")
    if train_run_id:
        lines.append(f"Model: [train run]({run_link(client, train_run_id)}).")
        summary = verdict or "uncalibrated"
        append_description(client, train_run_id, f"- evaluate: [run]({run_link(client, run_id)}), {summary}")
    if calibration_run:
        lines.append(f"Calibration: [calibrate run]({run_link(client, calibration_run)}).")
    client.set_tag(run_id, DESCRIPTION_TAG, "\n".join(lines))


def _per_rows(frame: pd.DataFrame, state: CalibrationState):
    if state.task == "age":
        errors = (frame["expected_age"] - frame["age"]).abs().to_numpy()
        return lambda rows: float(errors[rows].mean()) if rows.size else np.nan
    correct = frame[[f"p_{c}" for c in state.content.classes]].to_numpy().argmax(1) == frame["label"].to_numpy()
    return lambda rows: float(correct[rows].mean()) if rows.size else np.nan


def robustness_table(module, state, images, rows, coverage, functions, overall, device=None) -> pd.DataFrame:
    records = []
    for name, perturb in PERTURBATIONS.items():
        frame = predictions_frame(module, state, perturb(images), rows, coverage, device)
        for metric, function in functions.items():
            estimate, clean = function(frame), overall[metric]
            delta = estimate.value - clean.value if estimate.measurable and clean.measurable else np.nan
            records.append(
                {"perturbation": name, "metric": metric, "estimate": estimate.text(), "delta_vs_clean": delta}
            )
    return pd.DataFrame(records)


def figures_for(frame, state, tables, fairness, headline_name) -> dict[str, Figure]:
    figures = {}
    if state.task == "age":
        minors = {
            f"P(age<{g.gate:g})": (frame[f"p_below_{g.gate:g}"].to_numpy(), (frame["age"] < g.gate).to_numpy())
            for g in state.age.gates
        }
        figures["Reliability of P(age < T)"] = report.reliability_plot(minors, "reliability per gate")
        figures["Error vs true age"] = report.error_by_age_plot(tables["error_by_age"])
        for gate in state.age.gates:
            table = tables.get(f"gate{gate.gate:g}_by_age")
            if table is not None and len(table):
                figures[f"Gate {gate.gate:g}: pass and false-rejection rates by true age"] = report.gate_plot(
                    table, gate.gate
                )
    else:
        labels = frame["label"].to_numpy()
        probs = frame[[f"p_{c}" for c in state.content.classes]].to_numpy()
        figures["Reliability (top label)"] = report.reliability_plot(
            {"top label": (probs.max(1), probs.argmax(1) == labels)}, "top-label reliability"
        )
        curves = {name: (probs[:, i], labels == i) for i, name in enumerate(state.content.classes)}
        curves["unsafe"] = (frame["unsafe_score"].to_numpy(), _positives(frame, "unsafe", state))
        figures["ROC and precision-recall"] = report.roc_pr_plot(curves)
    figures[f"Per-group {headline_name}"] = report.group_bars_plot(fairness, headline_name)
    if state.stream is not None:  # calibrate's test streams: the chosen policy beside the fixed rules
        policy = state.stream
        rules = {f"chosen: {policy.k} of {policy.n}": policy.test} | policy.compared
        figures["Live streams: recall against interruptions, and time to block"] = report.stream_rules_plot(
            rules, f"{policy.deadline_s:g}s"
        )
    if state.age_stream is not None:
        figures["Live streams: pass rate and false rejection against frames seen"] = report.frames_seen_plot(
            state.age_stream.gates
        )
    return figures

"""Compare MLflow runs side by side: `childsafe compare RUN_A RUN_B`.

The delta of a metric that both runs logged with a 95% interval gets an approximate interval
(the half-widths combined in quadrature, as for independent estimates); "excludes 0" says whether
the difference is larger than the noise of the two measurements.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig
from rich.table import Table

from scripts.hydra_app import console, run_stage
from tracking.errors import WorkbenchError
from tracking.mlflow_run import default_tracking_uri


def comparison_table(metrics: list[dict[str, float]], names: list[str], prefixes: list[str]) -> pd.DataFrame:
    base = metrics[0]
    keys = sorted(k for k in set().union(*metrics) if k.startswith(tuple(prefixes)) and "_ci_" not in k)
    rows = []
    for key in keys:
        row = {"metric": key, names[0]: base.get(key, math.nan)}
        for name, other in zip(names[1:], metrics[1:], strict=True):
            row[name] = other.get(key, math.nan)
            row[f"delta {name}"] = delta = row[name] - row[names[0]]
            halves = [(m.get(f"{key}_ci_high", math.nan) - m.get(f"{key}_ci_low", math.nan)) / 2 for m in (base, other)]
            half = math.hypot(*halves)
            row[f"CI excludes 0 {name}"] = (abs(delta) > half) if math.isfinite(half) else "no interval"
        rows.append(row)
    return pd.DataFrame(rows)


def compare(cfg: DictConfig) -> pd.DataFrame:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(default_tracking_uri())
    wanted = [str(r) for r in cfg.runs]
    experiments = [e.experiment_id for e in client.search_experiments()]
    quoted = ", ".join(f"'{r}'" for r in wanted)
    try:
        found = {r.info.run_id: r for r in client.search_runs(experiments, f"attributes.run_id IN ({quoted})")}
    except MlflowException as error:
        raise WorkbenchError(f"compare: cannot search runs in {default_tracking_uri()}: {error}") from error
    missing = [r for r in wanted if r not in found]
    if missing:
        raise WorkbenchError(f"compare: no MLflow run {', '.join(missing)} in {default_tracking_uri()}.")
    runs = [found[r] for r in wanted]
    names = [f"{r.info.run_name or r.info.run_id[:8]}" for r in runs]
    table = comparison_table([r.data.metrics for r in runs], names, list(cfg.prefixes))
    view = Table(title="run comparison (first run is the baseline)")
    for column in table.columns:
        view.add_column(str(column))
    for _, row in table.iterrows():
        view.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console.print(view)
    output = Path(cfg.paths.output_dir)
    (output / "comparison.md").write_text(table.to_markdown(index=False) + "\n")
    table.to_html(output / "comparison.html", index=False)
    console.print(f"written: {output / 'comparison.md'} and comparison.html")
    return table


def main() -> None:
    # Positional run ids are friendlier than a Hydra list: `childsafe compare A B` means runs=[A,B].
    positional = [a for a in sys.argv[1:] if "=" not in a and not a.startswith("-")]
    if positional:
        rest = [a for a in sys.argv[1:] if a not in positional]
        sys.argv = [sys.argv[0], f"runs=[{','.join(positional)}]", *rest]
    run_stage("compare", compare)


if __name__ == "__main__":
    main()

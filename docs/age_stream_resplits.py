"""The measurement behind docs/benchmarks.md's age stream re-splits: is a test miss of the certified target the
split's luck or the certificate's fault?

    .venv/bin/python docs/age_stream_resplits.py outputs/calibrate/runs/<calibrate run folder> --resplits 200

Reads a calibrate run's state and config, runs its model on the same synthetic age streams (the cache is reused),
then pools the calib and test people and draws `--resplits` new stratified 50/50 splits. On each, the policy is
chosen and certified on the calib half by calibrate's own `choose_age_policy` (window and thresholds), and the test
half's minor pass rate is counted at those thresholds. Not a test: it runs the model on every stream frame (minutes
on CPU).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from rich.progress import track

from calibration.age_streams import StreamSet, choose_age_policy, stream_sets
from calibration.calibrate import stream_generator
from calibration.state import CalibrationState
from datamodules.cache import materialise
from datamodules.splits import label_strata, stratified_group_split
from datamodules.synthetic.streams import assign_stream_splits
from export.parity import reference_outputs
from tracking.runs import resolve_trained_run


def pooled_streams(run: Path) -> tuple[CalibrationState, StreamSet]:
    """The run's calibration state and every calib and test person's stream, scored by its model."""
    state = CalibrationState.load(run / "calibration_state.json")
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    with tempfile.TemporaryDirectory() as download:
        trained = resolve_trained_run(None, state.checkpoint, Path(download), "age", None)
        model = trained.load_model()
    settings = cfg.calibration.streams
    streams = stream_generator(cfg, trained, model)
    fractions, seed = dict(settings.split_fractions), int(settings.seed)
    dataset = materialise(streams, cfg.paths.cache_dir, fractions, seed, 1, assign_stream_splits)
    outputs = reference_outputs(model, state, np.asarray(dataset.images), state.interval_coverage(None), "cpu")
    decided = outputs["ood_score"].astype(np.float32) <= np.float32(state.ood.threshold)
    sets = stream_sets(dataset.manifest, outputs["prob_below"], decided)
    calib, test = sets["calib"], sets["test"]
    return state, StreamSet(
        calib.ids + test.ids,
        np.concatenate([calib.ages, test.ages]),
        calib.probabilities + test.probabilities,
        calib.decided + test.decided,
    )


def subset(streams: StreamSet, rows: np.ndarray) -> StreamSet:
    return StreamSet(
        [streams.ids[i] for i in rows],
        streams.ages[rows],
        [streams.probabilities[i] for i in rows],
        [streams.decided[i] for i in rows],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a calibrate run folder (calibration_state.json, .hydra/config.yaml)")
    parser.add_argument("--resplits", type=int, default=200)
    args = parser.parse_args()
    state, pool = pooled_streams(args.run)
    shipped = state.age_policy
    gates = sorted((p for p in state.operating_points if p.target == "minor"), key=lambda p: p.gate)
    strata = label_strata(pd.Series(pool.ages), "age")
    rates: dict[float, list[float]] = {float(p.gate): [] for p in gates}
    windows = []
    for draw in track(range(args.resplits), description="re-splits"):
        split = stratified_group_split(strata, np.array(pool.ids), {"calib": 0.5, "test": 0.5}, 1000 + draw)
        calib, test = subset(pool, np.flatnonzero(split == "calib")), subset(pool, np.flatnonzero(split == "test"))
        policy = choose_age_policy(
            calib,
            test,
            gates,
            shipped.max_minor_pass_rate,
            shipped.confidence,
            shipped.candidates,
            shipped.frame_rate_hz,
        )
        windows.append(policy.n)
        for gate in policy.gates:
            rates[gate["gate"]].append(gate["test"]["minor_pass_rate"]["value"])
    target = shipped.max_minor_pass_rate
    chosen = ", ".join(f"n={n}: {windows.count(n)}" for n in sorted(set(windows)))
    print(f"{args.resplits} re-splits of {len(pool.ids)} people; windows chosen {chosen}; target {target:g}")
    print(f"| gate | test minor pass rate: mean | median | 95th percentile | share of re-splits above {target:g} |")
    print("|---|---|---|---|---|")
    for gate, values in rates.items():
        values = np.array(values)
        print(
            f"| {gate:g} | {values.mean():.4f} | {np.median(values):.4f} | {np.quantile(values, 0.95):.4f} | "
            f"{(values > target).mean():.3f} |"
        )


if __name__ == "__main__":
    main()

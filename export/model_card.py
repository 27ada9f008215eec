"""A model card after Mitchell et al. (2019), written from the contract so the two never disagree."""

from __future__ import annotations

from typing import Any

import pandas as pd

from evaluation.scorecard import verdict_line

INTENDED_USE = {
    "age": "Estimate whether a live video-chat user is likely under 13, 16 or 18, so a runtime filter can gate "
    "access or escalate to stronger age assurance. A decision support signal, combined with other checks.",
    "content": "Flag frames of a live video stream that are likely sexual or exhibitionist, so a runtime filter "
    "can blur, cut or escalate a stream before a minor sees it.",
}
OUT_OF_SCOPE = {
    "age": "Identifying people; legal age verification on its own; any use on images that are not a single, "
    "frontal face crop made as the contract states; surveillance.",
    "content": "Judging artistic or medical content; any decision without human review where the law requires "
    "it; classifying people rather than frames.",
}


def _ci(metric: dict[str, Any]) -> str:
    return f"{_rate(metric, 'value', ends=('ci_low', 'ci_high'))}, n={metric['n']}"


def _number(value: float | None) -> str:
    return "not measurable" if value is None else f"{value:.4f}"


def _rate(record: dict[str, Any], key: str, ends: tuple[str, str] | None = None) -> str:
    low, high = ends or (f"{key}_ci_low", f"{key}_ci_high")
    if record.get(key) is None:
        return f"not measurable ({record.get('reason', 'no data')})"
    return f"{record[key]:.4f} ({_number(record[low])}-{_number(record[high])})"


def _input_line(contract: dict[str, Any]) -> str:
    spec = contract["input"]
    crop = spec.get("face_crop")
    what = (
        f"one face crop per face: the detector's box grown by {crop['margin']:g} of its size on each side"
        + (", squared" if crop["square"] else "")
        + ", as the training data was cut (see `input.face_crop`)"
        if crop is not None
        else "whole frames"
    )
    cache, centre = spec["resize"]["output_size"][0], spec["centre_crop"]
    framing = (
        f", then takes the centre {spec['network_size']}x{spec['network_size']} (offset {centre['offset']}), as "
        "evaluation did"
        if centre["offset"]
        else ""
    )
    return (
        f"- Input: {spec['dtype']} {spec['colour_order']} {spec['layout']} {what}, of any size from {spec['min_side']} "
        f"to {spec['max_side']} pixels a side. The graph itself resizes to {cache}x{cache} (antialiased bilinear, "
        f"as training data was cached; checked at several frame sizes before publishing){framing}, then normalises "
        "and calibrates: do not resize before the call."
    )


def _abstention_line(contract: dict[str, Any]) -> str:
    ood = contract["abstention"]["ood"]
    small = contract["abstention"].get("face_too_small")
    rates = f"{_share(ood['calib_abstention_rate'])} of calib and {_share(ood['test_abstention_rate'])} of test images"
    return (
        f"- Abstention: the graph's `ood_score` abstains on inputs far from the training images (blank or noise "
        f"frames): {ood['rule']} ({ood['threshold']:.6g}, the calib split's {ood['quantile']:g} quantile; {rates})"
        + (f"; faces smaller than {small['min_face_side']:g} pixels are abstained on too" if small else "")
        + ". An abstained input has no decision and does not pass a gate."
    )


def _share(rate: float | None) -> str:
    return "an unmeasured share" if rate is None else f"{rate:.2%}"


def _signing_line(signing: dict[str, Any]) -> str:
    if signing["public_key_sha256"] is None:
        return (
            "- Signing: **unsigned**; SHA256SUMS proves integrity only. Runtimes that pin a release key refuse "
            "this bundle."
        )
    return (
        f"- Signing: {signing['algorithm']} signature of {signing['signed_file']} in {signing['signature_file']}, "
        f"release key sha256 `{signing['public_key_sha256']}`; runtimes pin that key and refuse anything else."
    )


def _stream_lines(stream: dict[str, Any]) -> list[str]:
    """The stream policy and what it buys, in words: time to block, interruptions, against the fixed rules."""
    policy = stream["policy"]
    rate = stream["frame_rate_hz"]
    if policy["method"] == "mean_logit":
        return _age_policy_lines(stream) + (_age_stream_lines(stream["age"]) if "age" in stream else [])
    rule = f"a stream blocks when {policy['k']} of its last {policy['n']} frames block, at {rate:g} frames a second"
    if not stream["certified"]:
        lines = ["", "## Live streams", f"- Smoothing: {rule}. Not certified: {stream['reason']}."]
        return lines + (_age_stream_lines(stream["age"]) if "age" in stream else [])
    certificate, test = stream["certificate"], stream["test"]
    deadline = f"{certificate['deadline_s']:g}s"
    lines = [
        "",
        "## Live streams",
        f"- Policy: {rule} (decision `{policy['decision']}`), chosen on calib streams as the rule with the fewest "
        f"false interruptions per hour whose recall within {deadline} is certified.",
        f"- Guarantee (calib, {certificate['event_streams']} event streams of {certificate['streams']}): at least "
        f"{certificate['recall_lower_bound']:.4f} of streams with an explicit event are blocked within {deadline} of "
        f"its onset, at {certificate['confidence']:g} confidence (target {certificate['min_recall']:g}).",
        f"- Test ({test['event_streams']} event streams of {test['streams']}): "
        + "; ".join(f"blocked within {d}: {_ci(r)}" for d, r in test["deadline_recall"].items())
        + f"; false interruptions of benign chats per hour: {_ci(test['interruptions_per_hour'])}.",
        "",
        f"| rule (test streams) | blocked within {deadline} (95% CI) | false interruptions per hour (95% CI) |",
        "|---|---|---|",
    ]
    rows = {f"chosen: {policy['k']} of {policy['n']}": test} | stream["compared"]
    for name, figures in rows.items():
        recall, interruptions = figures["deadline_recall"][deadline], figures["interruptions_per_hour"]
        lines.append(f"| {name} | {_ci(recall)} | {_ci(interruptions)} |")
    return lines


def _age_policy_lines(stream: dict[str, Any]) -> list[str]:
    """The certified age stream policy in words: the rule, its start, and per gate what it certifies and costs."""
    n, rate, certificate = stream["policy"]["n"], stream["frame_rate_hz"], stream["certificate"]
    lines = [
        "",
        "## Live streams",
        f"- Policy: a user is judged on the mean of logit P(age < gate) over their last {n} decided frames "
        f"({n / rate:g} s at {rate:g} frames a second); until {n} frames are decided, every gate holds them as under "
        "it.",
        f"- Guarantee (calib, {certificate['streams']} streams of one person each): at each gate, at most "
        f"{certificate['max_minor_pass_rate']:g} of people under it pass at any moment of their first "
        f"{certificate['frames_per_stream']} frames, at {certificate['confidence']:g} confidence.",
        "",
        "| gate | calib bound on minors passing | minors passing, test (95% CI) | adults held under it, test "
        "| minors passing, one frame at a time, test |",
        "|---|---|---|---|---|",
    ]
    for gate in stream["gates"]:
        test = gate["test"]
        lines.append(
            f"| {gate['gate']:g} | {gate['certificate']['pass_rate_upper_bound']:.4f} | {_ci(test['minor_pass_rate'])} "
            f"| {_ci(test['adult_false_rejection'])} | {_ci(gate['per_frame']['minor_pass_rate'])} |"
        )
    return lines


def _age_stream_lines(age: dict[str, Any]) -> list[str]:
    """Per gate: one frame against the whole stream, at the same adult false rejection, in words and a table."""
    lines = [
        f"- Judging a person over a stream (measured on {age['test_streams']} test streams of "
        f"{age['frames_per_stream']} frames at {age['frame_rate_hz']:g} per second; the {age['aggregation']}; the "
        "runtime applies runtime.smoothing, not this measurement): the threshold after m frames matches the "
        "per-frame operating point's "
        "adult false rejection on calib.",
        "",
        "| gate | minor pass rate, one frame (95% CI) | minor pass rate, whole stream (95% CI) "
        "| adult false rejection, one frame | adult false rejection, whole stream | frames needed |",
        "|---|---|---|---|---|---|",
    ]
    for gate in age["gates"]:
        frame, whole = gate["per_frame"], gate["per_stream"][-1]
        needed = gate["frames_needed"] if gate["frames_needed"] is not None else "not reached"
        lines.append(
            f"| {gate['gate']:g} | {_ci(frame['minor_pass_rate'])} | {_ci(whole['minor_pass_rate'])} | "
            f"{_ci(frame['adult_false_rejection'])} | {_ci(whole['adult_false_rejection'])} | {needed} |"
        )
    return lines


def render_model_card(contract: dict[str, Any]) -> str:
    task, data, metrics = contract["task"], contract["data"], contract["metrics"]
    headline = "MAE (years)" if task == "age" else "accuracy"
    lines = [
        f"# Model card: {contract['model_name']}",
        "",
        "## Model details",
        f"- Task: {task}; created {contract['created_at']} from git commit `{contract['git_commit']}`.",
        f"- Training run: MLflow `{contract['mlflow_run_id']}`; exported with {contract['versions']['exporter']} "
        f"at opset {contract['versions']['opset']} (torch {contract['versions']['torch']}, verified on onnxruntime "
        f"{contract['versions']['onnxruntime']}).",
        _input_line(contract),
        _abstention_line(contract),
        _signing_line(contract["release"]["signing"]),
        "",
        "## Intended use",
        INTENDED_USE[task],
        "",
        "## Out-of-scope uses",
        OUT_OF_SCOPE[task],
        "",
        "## Training data",
        f"- {data['name']}, licence {data['licence']}, manifest digest `{data['digest']}`.",
    ]
    if "card" in data:
        card = data["card"]
        lines += [
            f"- Dataset card: {card['name']} {card['version']} from {card['source']}; permitted uses "
            f"{', '.join(card['permitted_uses']) or 'none'} (this model: {data['intended_use']}); terms: "
            f"{card['terms_status']}. Contains minors: {'yes' if card['contains_minors'] else 'no'}. "
            f"Consent basis: {card['consent_basis']}.",
            *[f"- Known bias: {bias}" for bias in card["known_biases"]],
            f"- Images were cropped as the contract's `data.crop` states: {data['crop']}.",
        ]
    if data["synthetic"]:
        lines.append(
            "- **The training data is synthetic** (procedural renders, no real people). The figures below "
            "validate the pipeline's mechanics and statistics; they say nothing about real-world accuracy."
        )
    lines += [
        "",
        "## Evaluation data",
        f"- The held-out, subject-disjoint test split of the same dataset ({metrics['headline']['n']} images); "
        "operating points were chosen on the separate calib split.",
        "",
        "## Metrics",
        f"- Test {headline}: {_ci(metrics['headline'])}.",
        "",
        "Every guarantee and test miss rate counts people (age) or scenes (content), not images: one of them "
        "counts as missed when any of its images is missed. Thresholds are float32 and the graph compares its own "
        "float32 scores with them; export recounted every certificate's misses with onnxruntime on the calib split. "
        "False-alarm rates are shares of negative images flagged, with a 95% interval from a bootstrap over people "
        f"or scenes; a point flagging more than {contract['release']['max_false_alarm_rate']:g} of them is "
        "degenerate and is not published unless explicitly allowed.",
        "",
        "| operating point | threshold | guarantee (calib) | test miss rate (95% CI) | test false-alarm rate (95% CI)"
        " | precision at base rate |",
        "|---|---|---|---|---|---|",
    ]
    for point in contract["operating_points"]:
        test, guarantee = point["test"], point["guarantee"]
        lines.append(
            f"| {point['name']}{' (degenerate)' if point['degenerate'] else ''} | {point['threshold']:.6g} | "
            f"{guarantee['meaning']} at {guarantee['confidence']:g} confidence: {guarantee['calib_misses']} of "
            f"{guarantee['calib_units']} {guarantee['unit']} missed, bound {guarantee['miss_rate_upper_bound']:.4f}; "
            f"labels `{guarantee['labels']}` | {_rate(test, 'miss_rate')} of {test['positives']} {guarantee['unit']} | "
            f"{_rate(test, 'false_alarm_rate')} | {_number(test['precision_at_base_rate'])} at base rate "
            f"{_number(test['base_rate'])} |"
        )
    near_gate = [(p["name"], year) for p in contract["operating_points"] for year in p["test"].get("near_gate", [])]
    if near_gate:
        lines += [
            "",
            "Pass rates just below each gate (test split, per person, exact 95% interval), where pooled rates hide "
            "failures:",
            "",
            "| gate | true age | pass rate (95% CI) | people |",
            "|---|---|---|---|",
            *[
                f"| {name} | {year['age']} | {_rate(year, 'rate', ends=('ci_low', 'ci_high'))} | {year['units']} |"
                for name, year in near_gate
            ],
        ]
    for warning in contract["release"]["warnings"]:
        lines.append(f"- **Warning:** {warning}")
    lines += ["", "## Fairness slices", ""]
    if metrics["slices"]:
        lines += [f"| attribute | value | test {headline} |", "|---|---|---|"]
        for attribute, values in metrics["slices"].items():
            lines += [f"| {attribute} | {value} | {_ci(metric)} |" for value, metric in values.items()]
    else:
        lines.append("No attribute columns in this dataset's manifest: not measurable.")
    lines += _stream_lines(contract["stream"])
    lines += [
        "",
        "## Caveats",
        "- Guarantees hold for data distributed like the calib split; a shift in population, camera or "
        "lighting voids them until the model is recalibrated on representative data.",
        "- Per-group (Mondrian) interval guarantees need the group at run time, which a filter does not have; "
        "the exported interval uses the pooled quantile.",
        "- See `contract.json` for every number above and `docs/export-contract.md` for its meaning.",
        "",
    ]
    return "\n".join(lines)


def render_version_description(contract: dict[str, Any], scorecard: pd.DataFrame, links: dict[str, str]) -> str:
    """The registry version's description: what it is, its data, the scorecard and where everything is.

    Short by design (MLflow keeps 5,000 characters): the model card itself is in the bundle.
    """
    data, headline = contract["data"], contract["metrics"]["headline"]
    unit = " years" if headline["name"] == "mae" else ""
    labels = contract["labels"]
    if contract["task"] == "age":
        what = "age estimation, gates " + ", ".join(f"{gate:g}" for gate in labels["gates"])
    else:
        what = "explicit-content classification, classes " + ", ".join(labels["classes"])
    return "\n".join(
        [
            f"**{verdict_line(scorecard)}**",
            "",
            f"{contract['model_name']}: an ONNX bundle (contract schema {contract['schema_version']}) for {what}. "
            f"Test {headline['name']} {headline['value']:.4g}{unit} "
            f"({headline['ci_low']:.4g}-{headline['ci_high']:.4g}).",
            f"Data: {data['name']}, licence {data['licence']}"
            + (", synthetic" if data["synthetic"] else f", permitted uses {', '.join(data['card']['permitted_uses'])}")
            + ("; a debug-sized run, never to ship." if contract["release"]["debug_run"] else "."),
            "",
            scorecard[["operating point", "protects", "target: max miss rate", "verdict", "why"]].to_markdown(
                index=False
            ),
            "",
            " · ".join(f"[{name}]({target})" for name, target in links.items()),
            "",
            "The full scorecard is on the evaluate run; the model card is `model_card.md` in the bundle.",
        ]
    )

"""A model card after Mitchell et al. (2019), written from the contract so the two never disagree."""

from __future__ import annotations

from typing import Any

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


def _ci(metric: dict[str, float]) -> str:
    return f"{metric['value']:.4f} (95% CI {metric['ci_low']:.4f}-{metric['ci_high']:.4f}, n={metric['n']})"


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
        f"- Input: {contract['input']['dtype']} {contract['input']['colour_order']} {contract['input']['layout']}, "
        f"{contract['input']['height']}x{contract['input']['width']}; the graph normalises and calibrates itself.",
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
        "| operating point | threshold | guarantee (calib) | test miss rate (95% CI) | test false-alarm rate |",
        "|---|---|---|---|---|",
    ]
    for point in contract["operating_points"]:
        test = point["test"]
        lines.append(
            f"| {point['name']} | {point['threshold']:.4g} | {point['guarantee']['meaning']} at "
            f"{point['guarantee']['confidence']:g} confidence | {test['miss_rate']:.4f} "
            f"({test['miss_rate_ci_low']:.4f}-{test['miss_rate_ci_high']:.4f}) | {test['false_alarm_rate']:.4f} |"
        )
    lines += ["", "## Fairness slices", ""]
    if metrics["slices"]:
        lines += [f"| attribute | value | test {headline} |", "|---|---|---|"]
        for attribute, values in metrics["slices"].items():
            lines += [f"| {attribute} | {value} | {_ci(metric)} |" for value, metric in values.items()]
    else:
        lines.append("No attribute columns in this dataset's manifest: not measurable.")
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

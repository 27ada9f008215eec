"""Where the pipeline's extra time per training step goes, beside the plain loop: `childsafe bench`
profiles one more side-by-side repeat when the ratio falls short of its target (or always, with
`bench.profile=true`), so a shortfall is reported together with its explanation.

cProfile rather than Lightning's profilers: those time the pipeline alone, and the question is what
it spends beyond the plain step that runs beside it.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
from collections import Counter
from collections.abc import Callable

import lightning as L

# The callback hooks Lightning calls on every training step.
PER_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


class ProfileAfterWarmup(L.Callback):
    """Profiles from the first timed step to the end of training, so set-up and warm-up stay out."""

    def __init__(self, profiler: cProfile.Profile, warmup: int):
        self.profiler, self.warmup = profiler, warmup

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            self.profiler.enable()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.profiler.disable()


def cumulative_seconds(stats: pstats.Stats, function: Callable) -> tuple[float, int]:
    """Time inside `function` (including what it calls) and its number of calls."""
    code = function.__code__
    entry = stats.stats.get((code.co_filename, code.co_firstlineno, code.co_name))  # type: ignore[attr-defined]
    return (entry[3], entry[1]) if entry else (0.0, 0)


def overridden_hooks(kind: type[L.Callback]) -> list[Callable]:
    """The per-step hooks a callback class defines itself."""
    hooks = [(getattr(kind, name), getattr(L.Callback, name)) for name in PER_STEP_HOOKS]
    return [hook for hook, default in hooks if hook is not default]


def profile_rows(
    run: Callable[[L.Callback], tuple[L.Trainer, list[float], list[float]]], warmup: int, skip: tuple[type, ...]
) -> list[str]:
    """Markdown rows: the two arms' step times under the profiler, and the pipeline's extra split by source.

    `run` trains one side-by-side repeat with the given extra callback and returns the trainer and
    the two arms' per-step seconds; callbacks of the `skip` types (the harness's own) are not listed.
    """
    profiler = cProfile.Profile()
    trainer, pipeline_seconds, plain_seconds = run(ProfileAfterWarmup(profiler, warmup))
    stats = pstats.Stats(profiler)
    steps = len(pipeline_seconds) - warmup
    pipeline_ms = statistics.mean(pipeline_seconds[warmup:]) * 1e3
    plain_ms = statistics.mean(plain_seconds[warmup:]) * 1e3
    log_seconds, log_calls = cumulative_seconds(stats, L.LightningModule.log)
    parts = {f"Lightning's `self.log` ({log_calls / steps:.0f} calls per step)": log_seconds / steps * 1e3}
    instances = Counter(type(c) for c in trainer.callbacks if not isinstance(c, (*skip, ProfileAfterWarmup)))
    for kind, count in instances.items():  # instances of a class share its hooks' code, and cProfile sums them
        hooks = overridden_hooks(kind)
        if hooks:
            label = f"callback `{kind.__name__}`" + (f" ({count} instances)" if count > 1 else "")
            parts[f"{label}, its per-step hooks"] = sum(cumulative_seconds(stats, h)[0] for h in hooks) / steps * 1e3
    rest = pipeline_ms - plain_ms - sum(parts.values())
    return [
        "| where a pipeline step's extra time goes (cProfile over one more repeat; profiled code runs slower) "
        "| ms per step |",
        "|---|---|",
        f"| pipeline step / plain-loop step, both profiled | {pipeline_ms:.1f} / {plain_ms:.1f} |",
        f"| pipeline's extra time per step | {pipeline_ms - plain_ms:.1f} |",
        *(f"| of which: {what} | {ms:.2f} |" for what, ms in parts.items()),
        f"| of which: the rest (Lightning's loop: closure, hook dispatch, batch fetch and transfer; and noise "
        "between the two arms, so it can come out below zero) "
        f"| {rest:.2f} |",
    ]

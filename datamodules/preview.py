"""A labelled grid of samples, so a person can see what the model learns from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

TILE = 128
CAPTION = 28


def _caption(row: pd.Series, columns: tuple[str, ...]) -> str:
    values = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
    return " ".join(values)


def save_preview(
    images: np.ndarray, manifest: pd.DataFrame, columns: tuple[str, ...], path: Path, count: int = 32, per_row: int = 8
) -> Path:
    """Write the first `count` rows of `manifest` as tiles captioned with those of `columns` it has.

    Optional columns of a format (an age manifest's `sex`, say) may be absent from a dataset.
    """
    columns = tuple(c for c in columns if c in manifest.columns)
    rows = manifest.head(count)
    n_rows = -(-len(rows) // per_row)
    sheet = Image.new("RGB", (per_row * TILE, n_rows * (TILE + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (position, row) in enumerate(rows.iterrows()):
        x, y = (k % per_row) * TILE, (k // per_row) * (TILE + CAPTION)
        tile = Image.fromarray(np.asarray(images[position])).resize((TILE, TILE), Image.NEAREST)
        sheet.paste(tile, (x, y))
        draw.text((x + 3, y + TILE + 2), _caption(row, columns[:2]), fill="black")
        draw.text((x + 3, y + TILE + 14), _caption(row, columns[2:]), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path

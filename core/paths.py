"""Where the workbench's own files are, and where a user's outputs go."""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout, or site-packages for an installed wheel
CONFIG_DIR = SOURCE_ROOT / "configs"  # shipped as package data, so it is here in both cases
HOME_ENV = "CHILDSAFE_HOME"


def workbench_home() -> Path:
    """Where outputs, the store, the cache and releases go: `$CHILDSAFE_HOME`, else the working directory.

    Never the package's own folder, so an installed wheel works from any folder as the checkout does.
    """
    return Path(os.environ.get(HOME_ENV) or os.getcwd()).resolve()

"""Loader vs training-step throughput: `python scripts/loader_throughput.py experiment=age_synthetic [overrides]`.

Prints images/s the cached loader delivers with 2 workers and images/s the default CPU training
step consumes, and their ratio (docs/benchmarks.md records the figures).
"""

from __future__ import annotations

import json
import sys
import tempfile

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from datamodules.throughput import measure
from scripts.hydra_app import CONFIG_DIR, register_resolvers


def main() -> None:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=sys.argv[1:])
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp()
    print(json.dumps(measure(cfg), indent=2))


if __name__ == "__main__":
    main()

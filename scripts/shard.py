"""`childsafe shard`: write a cache to data.store as shards (datamodules/shards.py)."""

from __future__ import annotations

from core.hydra_app import run_stage
from datamodules.shards import shard


def main() -> None:
    run_stage("shard", shard)


if __name__ == "__main__":
    main()

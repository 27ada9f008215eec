"""`make gpu-check`: the GPU path end to end on this machine's GPUs, in one table (tracking/gpu_check.py).

python -m scripts.gpu_check                       # real sizes: needs CUDA, under 8 minutes on one GPU
python -m scripts.gpu_check --size tiny           # the same logic on CPU in seconds (what CI runs)
python -m scripts.gpu_check --docs docs/benchmarks.md   # also fill its section of the docs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from core.errors import WorkbenchError
from tracking.gpu_check import SIZES, run_check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="real", help="real (GPU) or tiny (CPU, for CI)")
    parser.add_argument(
        "--work-dir", type=Path, help="where runs, caches and the MLflow store go (default: a temp folder)"
    )
    parser.add_argument("--cache-dir", type=Path, help="reuse a synthetic-data cache (default: inside the work folder)")
    parser.add_argument("--docs", type=Path, help="write the table into this markdown file's gpu-check section")
    args = parser.parse_args(argv)
    try:
        if args.work_dir:
            run_check(SIZES[args.size], args.work_dir, args.cache_dir, args.docs)
        else:
            with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
                run_check(SIZES[args.size], Path(folder), args.cache_dir, args.docs)
    except WorkbenchError as error:
        print(f"gpu-check: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

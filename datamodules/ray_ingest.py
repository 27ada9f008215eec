"""Ingest's per-file inspection on Ray Data (data.ingest_engine=ray): the same `inspect_chunk`, on a Ray cluster.

Only the fan-out differs from the local process pool: a `ray.data.range` over the row positions is
mapped in batches by `inspect_chunk`, and every batch comes back with its row positions, so
ingest puts each inspection back where the local pool would have and everything after it (merge
of reasons, splits, the PDQ second pass across splits, report, manifest, digest) is the same code.

The map runs as Ray tasks, not actors: tasks fuse with the range read into one stage, whereas an
actor pool holding every CPU of a small local Ray leaves none for the read and waits forever.

`ray` is imported only here, so the CLI starts as fast without it. Every worker reads the dataset
at the driver's `data.root` path: on a cluster that folder must be mounted on every node.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import WorkbenchError
from datamodules.integrity import Cropping, Inspection, inspect_chunk, start_worker
from datamodules.licensed.base import BOX_COLUMNS
from datamodules.screening import HashList

CONNECT_TIMEOUT_S = 5.0


def _inspect_batch(
    batch: dict[str, np.ndarray], root: Path, rows: pd.DataFrame, cropping: Cropping, min_size: int, hashes: HashList
) -> dict[str, np.ndarray]:
    """One Ray task: the batch's row positions, their inspections as an object column, and their pixels apart.

    The pixels travel as one uint8 tensor column (zeros where a file stays out of the cache), which
    Ray Data moves as an Arrow tensor, not as a pickled array inside every inspection.
    """
    start_worker()
    positions = batch["id"]
    found = inspect_chunk(root, rows.iloc[positions], cropping, min_size, hashes)
    clean = np.array([inspection.pixels is not None for inspection in found])
    pixels = np.zeros((len(found), cropping.size, cropping.size, 3), dtype=np.uint8)
    for row in np.flatnonzero(clean):
        pixels[row] = found[row].pixels
    inspections = np.empty(len(found), dtype=object)
    inspections[:] = [replace(inspection, pixels=None) for inspection in found]
    return {"position": positions, "inspection": inspections, "clean": clean, "pixels": pixels}


def _require_reachable(address: str) -> None:
    """Fail in seconds, not after ray.init's minutes of retries, when nothing listens at a host:port address."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: ray.init itself says what it could not find
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise WorkbenchError(
            f"Nothing answers at data.ray_address={address} ({error}). Start the cluster's head there (`ray start "
            "--head --port=6379`, or the KubeRay head service), correct the address, or set data.ray_address=null to "
            "run ingest on a Ray started on this machine with data.render_workers CPUs."
        ) from error


@contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[None]:
    """A Ray to run on: the one already initialised, the cluster at `address`, or a local one of `workers` CPUs.

    Starts offline and quietly (no dashboard, no usage statistics, worker logs kept off the
    console) and shuts down only a Ray it started itself.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        yield
        return
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        ray.init(num_cpus=max(1, workers), **quiet)
    else:
        _require_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError) as error:
            raise WorkbenchError(
                f"Could not join the Ray cluster at data.ray_address={address}: {error} Use the head's GCS address "
                "(host:6379, or auto on a node of the cluster), or set data.ray_address=null for a local Ray."
            ) from error
    try:
        yield
    finally:
        ray.shutdown()


def ray_inspections(
    root: Path,
    rows: pd.DataFrame,
    cropping: Cropping,
    min_size: int,
    hash_list: HashList,
    chunk: int,
    workers: int,
    address: str | None,
) -> Iterator[tuple[np.ndarray, list[Inspection]]]:
    """(row positions, their inspections) per finished batch, in whatever order the cluster finishes them."""
    with ray_session(address, workers):
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ingest draws its own
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        table = rows[["path", *BOX_COLUMNS]].reset_index(drop=True)
        blocks = max(1, -(-len(rows) // chunk))
        dataset = ray.data.range(len(rows), override_num_blocks=blocks).map_batches(
            _inspect_batch,
            batch_size=chunk,
            batch_format="numpy",
            fn_kwargs={"root": root, "rows": table, "cropping": cropping, "min_size": min_size, "hashes": hash_list},
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            inspections = [
                replace(inspection, pixels=pixels) if clean else inspection
                for inspection, clean, pixels in zip(batch["inspection"], batch["clean"], batch["pixels"], strict=True)
            ]
            yield batch["position"], inspections

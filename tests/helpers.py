"""Test-only helpers: callbacks referenced from configs as `helpers.<name>` (pytest puts tests/ on sys.path),
and a real MLflow tracking server started through `make mlflow-server`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]


def cli_train(log_dir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    """The `childsafe train ... debug=smoke` command line, with folders kept out of the user's."""
    return [
        sys.executable,
        "-m",
        "scripts.cli",
        "train",
        *overrides,
        "debug=smoke",
        f"paths.log_dir={log_dir}",
        f"paths.cache_dir={cache_dir}",
    ]


class CrashAtEpoch(L.Callback):
    """Simulates a crash at the start of a given epoch, after earlier epochs were checkpointed."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")


class PoisonWeights(L.Callback):
    """Simulates a numerical blow-up: sets one weight to NaN before a given training batch."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == self.batch:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class Payload:
    """An arbitrary object a malicious checkpoint could smuggle in."""

    def __reduce__(self):
        return (print, ("this would have run",))


def consume_without_torch(bundle: Path, image: Path) -> subprocess.CompletedProcess:
    """The runtime consumer on one image in a fresh interpreter, failing there if it imported torch."""
    probe = (
        "import sys, childsafe_runtime.consumer as c\n"
        f"code = c.main([{str(bundle)!r}, {str(image)!r}])\n"
        "assert code == 0, code\n"
        "assert 'torch' not in sys.modules, 'the consumer imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """`make mlflow-server` on a free loopback port over a store under `root`; stoppable and restartable.

    The port and the store stay the same across `stop()` / `start()`, so a test can take the server
    away mid-run (a tracking outage) and bring the same one back.
    """

    def __init__(self, root: Path, port: int | None = None, startup_timeout_s: float = 90.0):
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_store = f"sqlite:///{root / 'server' / 'mlflow.db'}"
        self.artifacts = root / "server" / "artifacts"
        self.log = root / "server" / "server.log"
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and return once it answers /health (it migrates a fresh store first)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            "make", "--no-print-directory", "-s", "-C", str(REPO), "-o", ".venv/.installed", "mlflow-server",
            f"MLFLOW_PORT={self.port}", "MLFLOW_WORKERS=1",
            f"MLFLOW_BACKEND_STORE={self.backend_store}", f"MLFLOW_ARTIFACTS={self.artifacts}",
        ]  # fmt: skip
        with self.log.open("a") as log:
            # Its own session, so stop() ends make, mlflow and its uvicorn worker together.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"mlflow server not healthy after {self.startup_timeout_s}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        """Terminate the server's process group and wait until it is gone (the port is free again)."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    """A running tracking server for the body of the `with` block; `.url` is its address."""
    server = MlflowServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


FAULT_ENV = "CHILDSAFE_FAULT"


class Fault(L.Callback):
    """Injects the fault that `$CHILDSAFE_FAULT` names, `<what>@<global step>`, in the middle of that step.

    It strikes after the backward pass, before the optimizer updates the weights. `<what>` is SIGINT,
    SIGTERM or SIGKILL sent to this process, the same with `-group` sent to its whole process group
    (as a terminal's Ctrl-C is) or with `-twice` sent twice in a row, or `crash` (an exception). Read
    from the environment rather than the config, so the interrupted run and its resume share a config.
    """

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        what, _, step = os.environ.get(FAULT_ENV, "none@-1").partition("@")
        if trainer.global_step != int(step):
            return
        if what == "crash":
            raise RuntimeError(f"simulated crash in the middle of step {step}")
        name, _, scope = what.partition("-")
        if scope == "group":
            os.killpg(os.getpgid(0), getattr(signal, name))
            return
        for _ in range(2 if scope == "twice" else 1):
            os.kill(os.getpid(), getattr(signal, name))


class KillMidSave(L.Callback):
    """SIGKILLs its own process halfway through writing a given global step's checkpoint file."""

    def __init__(self, step: int):
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        checkpoint_io, step = trainer.strategy.checkpoint_io, self.step
        original = checkpoint_io.save_checkpoint

        def save_then_die(checkpoint, path, storage_options=None):
            if trainer.global_step != step:
                return original(checkpoint, path, storage_options)
            torch.save(checkpoint, checkpoint_io.staging_path(Path(path)))
            staging = checkpoint_io.staging_path(Path(path))
            staging.write_bytes(staging.read_bytes()[: staging.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)

        checkpoint_io.save_checkpoint = save_then_die


class RecordTrainPositions(L.Callback):
    """Saves the cache positions this rank trained on (`rank<N>.pt` in `folder`): DDP shards must not overlap."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.seen: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.seen.append(batch["position"].cpu())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(torch.cat(self.seen), self.folder / f"rank{trainer.global_rank}.pt")


class StopServerAtEpoch(L.Callback):
    """Takes the tracking server away (SIGTERM to its process group) as a given epoch starts."""

    def __init__(self, pgid: int, epoch: int, url: str):
        self.pgid, self.epoch, self.url = pgid, epoch, url

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.epoch:
            return
        os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                time.sleep(0.2)
            except (urllib.error.URLError, OSError):
                return
        raise RuntimeError(f"the tracking server at {self.url} did not stop")

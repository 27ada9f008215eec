"""Where shards live (a folder or `s3://bucket/prefix`) and the bounded local cache they are read through.

A store only moves whole files: `put` (atomic per object: a rename in a folder; on S3 one PUT, or a multipart
upload, which appears only once complete), `get` into a local path, and `sizes` (one listing). Everything S3 is
boto3 with its own credential chain (environment, `AWS_PROFILE`, instance role) and endpoint (`AWS_ENDPOINT_URL`,
or the profile's `endpoint_url`), so a SeaweedFS or MinIO server needs no setting of ours. Its failures are turned
into messages that say which object and what to change; a store is never half-written because each object
appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from filelock import FileLock

from core.errors import WorkbenchError

T = TypeVar("T")


class Store(Protocol):
    url: str

    def sizes(self) -> dict[str, int]:
        """Every object under the store's prefix, by name, with its size in bytes."""

    def get(self, name: str, destination: Path) -> None:
        """Copy object `name` into `destination` (a local file path)."""

    def put(self, source: Path, name: str) -> None:
        """Store the local file `source` as object `name`, whole or not at all."""


@dataclass(frozen=True)
class FolderStore:
    """Shards in a local or shared folder (NFS, a mounted bucket): the no-network form of a store."""

    root: Path

    @property
    def url(self) -> str:
        return str(self.root)

    def sizes(self) -> dict[str, int]:
        if not self.root.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")}

    def get(self, name: str, destination: Path) -> None:
        try:
            shutil.copyfile(self.root / name, destination)
        except FileNotFoundError as error:
            raise WorkbenchError(
                f"{self.root / name} is listed in the shard index but is not in the folder: the shards were moved "
                "or deleted after the index was written. Write the shards again (childsafe shard ...)."
            ) from error

    def put(self, source: Path, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{name}.partial"
        shutil.copyfile(source, partial)
        os.replace(partial, self.root / name)


@dataclass
class S3Store:
    """Objects under `s3://bucket/prefix`; the boto3 client is made on first use and never pickled (loader workers)."""

    bucket: str
    prefix: str
    _client: Any = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def __getstate__(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "prefix": self.prefix, "_client": None}

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Fail in seconds, not minutes, when the endpoint is down; the standard mode retries throttling.
            config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def sizes(self) -> dict[str, int]:
        found: dict[str, int] = {}
        with self.explained(""):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key(""))
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"][len(self.key("")) :]] = item["Size"]
        return found

    def get(self, name: str, destination: Path) -> None:
        with self.explained(name):
            self.client.download_file(self.bucket, self.key(name), str(destination))

    def put(self, source: Path, name: str) -> None:
        with self.explained(name):
            self.client.upload_file(str(source), self.bucket, self.key(name))

    @contextmanager
    def explained(self, name: str):
        """boto3's errors, said as what is wrong with which object and how to fix it."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

        where = f"{self.url}/{name}".rstrip("/")
        endpoint = self.client.meta.endpoint_url
        try:
            yield
        except EndpointConnectionError as error:
            raise WorkbenchError(
                f"Cannot reach the S3 endpoint {endpoint} for {where}: {error}. Check AWS_ENDPOINT_URL (or the "
                "endpoint_url of the AWS_PROFILE profile) and that the server is up and reachable from here."
            ) from error
        except NoCredentialsError as error:
            raise WorkbenchError(
                f"No S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                "naming a profile in ~/.aws/credentials."
            ) from error
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket",):
                raise WorkbenchError(
                    f"The bucket {self.bucket!r} does not exist at {endpoint}: create it, or fix data.store={self.url}."
                ) from error
            if code in ("404", "NoSuchKey"):
                raise WorkbenchError(
                    f"{where} does not exist at {endpoint}: the shard index names an object the store does not "
                    "hold. Write the shards again (childsafe shard ...), or fix data.store."
                ) from error
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                raise WorkbenchError(
                    f"{endpoint} refused the credentials for {where} ({code}): check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (or the AWS_PROFILE profile) and the bucket's policy."
                ) from error
            raise WorkbenchError(f"S3 request for {where} at {endpoint} failed: {error}") from error
        except (BotoCoreError, S3TransferFailedError, S3UploadFailedError) as error:
            raise WorkbenchError(
                f"S3 transfer of {where} at {endpoint} failed: {error}. Check the server (a full or read-only store "
                "refuses writes) and run the command again: an unfinished write leaves no index, so nothing is read."
            ) from error


def open_store(url: str) -> Store:
    """`s3://bucket/prefix` or a folder path (data.store)."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise WorkbenchError(f"data.store={url} names no bucket: write s3://<bucket>/<prefix>.")
        return S3Store(bucket, prefix.strip("/"))
    if "://" in url:
        raise WorkbenchError(f"data.store={url}: only s3://bucket/prefix or a folder path are supported.")
    return FolderStore(Path(url).expanduser())


def sha256_of(path: Path, chunk: int = 2**22) -> str:
    """Read in chunks, not whole: a shard is hundreds of MB (hashlib.file_digest would need Python 3.11)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch_checked(store: Store, name: str, size: int, sha256: str, local: Path) -> None:
    """Fetch object `name` to `local` only if it has the size and sha256 the shard index gives; else refuse, naming it.

    It is fetched beside `local` under a temporary name and renamed, so a refused or interrupted fetch leaves nothing.
    """
    with tempfile.NamedTemporaryFile(dir=local.parent, prefix=".fetch-", delete=False) as handle:
        partial = Path(handle.name)
    try:
        store.get(name, partial)
        fetched = partial.stat().st_size
        if fetched != size:
            raise WorkbenchError(
                f"Refusing shard {store.url}/{name}: it is {fetched:,} bytes but the shard index says {size:,} "
                "(truncated, or replaced after the index was written). Write the shards again (childsafe shard ...)."
            )
        if sha256_of(partial) != sha256:
            raise WorkbenchError(
                f"Refusing shard {store.url}/{name}: its sha256 does not match the shard index (corrupted in the "
                "store or in transit). Write the shards again (childsafe shard ...)."
            )
        partial.chmod(0o644)  # mkstemp makes it private; the cache is meant to be shared
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class LocalCache:
    """Objects fetched from a store into `directory`, at most `max_bytes` on disk, least recently used evicted.

    Each object is checked against the sha256 the shard index gives before it enters the cache, so what the
    cache holds is always what the writer wrote; a mismatch is refused, naming the object. Several processes
    (DDP ranks, loader workers) may share one cache: a file lock serialises making room and fetching, and a
    reader copies what it needs out of a shard before letting go, so an evicted file frees its space at once.
    """

    store: Store
    directory: Path
    max_bytes: int

    def open(self, name: str, size: int, sha256: str, opener: Callable[[Path], T]) -> T:
        """`opener` applied to the local copy of object `name`, fetched, checked and cached first if need be.

        Another process may evict the file between finding it and opening it; then it is fetched again. What
        `opener` returns (a memory map) stays valid after an eviction: the file's space is freed when it closes.
        """
        for _ in range(3):
            try:
                return opener(self.path(name, size, sha256))
            except FileNotFoundError:
                continue
        return opener(self.path(name, size, sha256))

    def path(self, name: str, size: int, sha256: str) -> Path:
        """The local copy of object `name` (fetched, checked and cached first if need be); its use is recorded."""
        local = self.directory / name
        try:
            os.utime(local)  # the recency that eviction reads
            return local
        except FileNotFoundError:
            pass
        if size > self.max_bytes:
            raise WorkbenchError(
                f"{self.store.url}/{name} is {size:,} bytes, more than the local cache may hold "
                f"(data.store_cache_bytes={self.max_bytes:,} in {self.directory}): raise data.store_cache_bytes "
                "to at least two shards' size."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(self.directory / ".lock"):
            if local.is_file():
                return local  # another process fetched it while this one waited
            self._make_room(size)
            fetch_checked(self.store, name, size, sha256, local)
        return local

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file() and p.name != ".lock")

    def _make_room(self, size: int) -> None:
        """Evict least recently used objects until `size` more bytes fit within the bound and on the disk."""
        cached = sorted(
            (p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime_ns,
        )
        used = sum(p.stat().st_size for p in cached)
        while cached and used + size > self.max_bytes:
            oldest = cached.pop(0)
            used -= oldest.stat().st_size
            oldest.unlink()
        free = shutil.disk_usage(self.directory).free
        if free < size:
            raise WorkbenchError(
                f"The disk holding the local shard cache {self.directory} has {free:,} bytes free, too few for "
                f"{self.store.url} shards of {size:,} bytes: free space there, or point data.store_cache_dir at a "
                "larger disk."
            )

"""PDQ hashing and hash-list screening: known abusive material must never reach a training set.

Hashes are 256-bit PDQ (Meta's perceptual hash) written as 64 hex digits, most significant bit
first: the same text form ThreatExchange and Meta's reference tools exchange, so lists from them
load unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pdqhash

from core.errors import WorkbenchError

MATCH_DISTANCE = 31  # Meta's reference threshold for a confident PDQ match
HEX_HASH = re.compile(r"^[0-9a-fA-F]{64}$")
PAIRS_PER_CHUNK = 2**21  # query-reference pairs compared at once: 64 MiB of XORed words


def pdq_hash(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The packed 32-byte hash and its quality (0-100; below ~50 the image is too flat to hash reliably)."""
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb, dtype=np.uint8))
    return np.packbits(bits.astype(np.uint8)), int(quality)


def to_hex(packed: np.ndarray) -> str:
    return bytes(packed).hex()


def from_hex(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8)


def nearest(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query hash, the position of its nearest reference hash and their distance in bits.

    Exhaustive, as the threshold (31 of 256 bits) is too wide for an exact index to prune much, but
    in chunks of queries, so memory stays at PAIRS_PER_CHUNK pairs however many hashes there are
    (the full distance matrix of 125,000 test images against 375,000 earlier ones would be 94 GB).
    """
    words_q = np.ascontiguousarray(queries, dtype=np.uint8).view(np.uint64)
    words_r = np.ascontiguousarray(references, dtype=np.uint8).view(np.uint64)
    positions, distances = np.empty(len(words_q), np.int64), np.empty(len(words_q), np.int64)
    step = max(1, PAIRS_PER_CHUNK // max(1, len(words_r)))
    for start in range(0, len(words_q), step):
        bits = np.bitwise_count(words_q[start : start + step, None, :] ^ words_r[None, :, :]).sum(axis=2)
        positions[start : start + step] = bits.argmin(axis=1)
        distances[start : start + step] = bits[np.arange(len(bits)), positions[start : start + step]]
    return positions, distances


@dataclass(frozen=True)
class HashList:
    """Every hash of the configured list files, with where each came from (for the quarantine report)."""

    hashes: np.ndarray  # (n, 32) uint8
    sources: list[str]  # "file:line" per hash

    @classmethod
    def load(cls, files: list[str | Path]) -> HashList:
        hashes, sources = [], []
        for file in map(Path, files):
            if not file.is_file():
                raise WorkbenchError(
                    f"Hash list {file} (data.hash_lists) does not exist. Point data.hash_lists at the list files "
                    "your organisation is entitled to use, or set data.hash_lists=[] to screen against none."
                )
            try:
                lines = file.read_text().splitlines()
            except UnicodeDecodeError as error:
                raise WorkbenchError(
                    f"Hash list {file} is not text ({error}). It must hold one PDQ hash per line as 64 hex digits."
                ) from error
            for number, line in enumerate(lines, start=1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                if not HEX_HASH.match(text):
                    raise WorkbenchError(
                        f"Hash list {file}, line {number}: {text[:80]!r} is not a PDQ hash. Each line must hold "
                        "one 256-bit PDQ hash as 64 hex digits (comments after # and blank lines are allowed)."
                    )
                hashes.append(from_hex(text))
                sources.append(f"{file}:{number}")
        return cls(np.stack(hashes) if hashes else np.empty((0, 32), np.uint8), sources)

    def match(self, packed: np.ndarray, max_distance: int = MATCH_DISTANCE) -> tuple[str, int] | None:
        """The closest listed hash within `max_distance` of one image's hash, as (source, distance)."""
        if not len(self.hashes):
            return None
        (best,), (distance,) = nearest(packed[None, :], self.hashes)
        return (self.sources[best], int(distance)) if distance <= max_distance else None

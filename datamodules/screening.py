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
POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint16)


def pdq_hash(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The packed 32-byte hash and its quality (0-100; below ~50 the image is too flat to hash reliably)."""
    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb, dtype=np.uint8))
    return np.packbits(bits.astype(np.uint8)), int(quality)


def to_hex(packed: np.ndarray) -> str:
    return bytes(packed).hex()


def from_hex(text: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(text), dtype=np.uint8)


def hamming(queries: np.ndarray, references: np.ndarray, chunk: int = 256) -> np.ndarray:
    """All pairwise bit distances between two (n, 32) packed hash arrays, in chunks to bound memory."""
    out = np.empty((len(queries), len(references)), dtype=np.uint16)
    for start in range(0, len(queries), chunk):
        xor = np.bitwise_xor(queries[start : start + chunk, None, :], references[None, :, :])
        out[start : start + chunk] = POPCOUNT[xor].sum(axis=2)
    return out


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
        distances = hamming(packed[None, :], self.hashes)[0]
        best = int(distances.argmin())
        return (self.sources[best], int(distances[best])) if distances[best] <= max_distance else None

"""PDQ nearest-hash search: exact against a bit-by-bit count, and memory bounded however many hashes there are."""

import tracemalloc

import numpy as np
import pytest

from datamodules import screening
from datamodules.screening import HashList, nearest, to_hex


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32), dtype=np.uint8)


@pytest.mark.parametrize("pairs_per_chunk", [1, 7 * 50, screening.PAIRS_PER_CHUNK])
def test_nearest_equals_a_bitwise_count_whatever_the_chunking(monkeypatch, pairs_per_chunk):
    monkeypatch.setattr(screening, "PAIRS_PER_CHUNK", pairs_per_chunk)
    rng = np.random.default_rng(0)
    references = random_hashes(rng, 50)
    queries = random_hashes(rng, 23)
    queries[5] = references[17] ^ np.packbits(np.eye(256, dtype=np.uint8)[3])  # one bit away from reference 17
    positions, distances = nearest(queries, references)
    expected = np.unpackbits(queries[:, None, :] ^ references[None, :, :], axis=2).sum(axis=2)
    assert positions.tolist() == expected.argmin(axis=1).tolist()
    assert distances.tolist() == expected.min(axis=1).tolist()
    assert (positions[5], distances[5]) == (17, 1)


def test_nearest_never_holds_the_whole_distance_matrix(monkeypatch):
    """400 x 50,000 pairs would be 40 MB as a uint16 matrix; chunked, the peak stays a few MB."""
    monkeypatch.setattr(screening, "PAIRS_PER_CHUNK", 2**16)
    rng = np.random.default_rng(1)
    queries, references = random_hashes(rng, 400), random_hashes(rng, 50_000)
    tracemalloc.start()
    nearest(queries, references)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 2**20, f"peak {peak} bytes"


def test_hash_list_match_names_the_closest_listed_hash(tmp_path):
    rng = np.random.default_rng(2)
    listed = random_hashes(rng, 3)
    (tmp_path / "list.txt").write_text("".join(f"{to_hex(h)}\n" for h in listed))
    hashes = HashList.load([tmp_path / "list.txt"])
    near = listed[2].copy()
    near[0] ^= 0b111  # 3 bits away
    assert hashes.match(near) == (f"{tmp_path / 'list.txt'}:3", 3)
    assert hashes.match(random_hashes(rng, 1)[0]) is None  # random hashes lie ~128 bits apart

"""Near-duplicate groups with MinHash/LSH over word 3-shingles of the normalised text."""

from __future__ import annotations

from collections.abc import Sequence

from datasketch import MinHashLSH

from lorafleet.textsig import NUM_PERM, SEED, minhash, shingles

__all__ = ["NUM_PERM", "SEED", "groups", "minhash", "near_duplicate_pairs", "shingles"]


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.8) -> list[tuple[int, int, float]]:
    """(i, j, estimated Jaccard) for i < j whose similarity is at least `threshold`."""
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    hashes = [minhash(t) for t in texts]
    pairs = []
    for i, m in enumerate(hashes):
        for j in lsh.query(m):
            score = m.jaccard(hashes[j])
            if score >= threshold:
                pairs.append((j, i, score))
        lsh.insert(i, m)
    return sorted(pairs)


def groups(n: int, pairs: Sequence[tuple[int, int, float]]) -> list[int]:
    """Union-find: a group id (its smallest member) per index."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(i) for i in range(n)]

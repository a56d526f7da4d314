"""Nearest packages to a query vector, from memory: sign codes scanned in full, then re-ranked.

A warm search process (a Lambda container, ``fdnix search -``) answers many queries from one
open dataset, so it can afford to hold the vectors in memory (about 190 MB for the full
fixture) and skip LanceDB's per-query work. Every package also gets a sign code: one bit per
dimension, set where its vector is above the mean vector (48 bytes for 384 dimensions). A
query compares its own code with all of them at once (Hamming distance, about 1 ms for
120k packages), keeps the :data:`RERANK_CANDIDATES` closest and ranks those by exact cosine
similarity.

Measured on the full fixture (119,845 MiniLM vectors, the dev and extra queries plus 200
package descriptions as queries; recall@50 against an exact float32 scan): 2,500 re-ranked
candidates find 0.98 of the true 50 nearest in about 2 ms; LanceDB's IVF_RQ index with its
refine step found 0.97 in 6.5 ms (``benchmarks/search_bench.py``, ``vector_memory``).

Only numpy and pyarrow are needed: this module ships in the Lambda layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from fdnix_assets.search_embedding import single_threaded_blas

RERANK_CANDIDATES = 2_500
# Rows coded at a time when loading: bounds the comparison's temporaries to a few MB.
LOAD_BLOCK_ROWS = 16_384
_FAR = np.iinfo(np.uint16).max
# One product of a few thousand rows: BLAS threads would cost more (and spin on the core the
# full-text search runs on) than they save.
_one_blas_thread = single_threaded_blas()


@dataclass(frozen=True)
class InMemoryVectors:
    """Unit-length float32 vectors, one row per package, and their sign codes.

    ``present`` is False for packages without a vector (their row is zeros); they are never
    returned. ``codes`` is word-major, ``(words, rows)``, so a scan reads each word of every
    code as one contiguous array.
    """

    vectors: np.ndarray
    present: np.ndarray
    mean: np.ndarray
    codes: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dimensions(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.codes.nbytes + self.present.nbytes)

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.FixedSizeListArray) -> InMemoryVectors:
        """Copies a fixed-size-list vector column (float16 or float32) into memory."""
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        value_type = column.type
        if not pa.types.is_fixed_size_list(value_type) or not pa.types.is_floating(
            value_type.value_type
        ):
            raise TypeError(f"a vector column is a fixed-size list of floats, not {value_type}")
        dimensions = value_type.list_size
        rows = sum(len(chunk) for chunk in chunks)
        vectors = np.zeros((rows, dimensions), dtype=np.float32)
        present = np.zeros(rows, dtype=bool)
        start = 0
        for chunk in chunks:
            count = len(chunk)
            # Assigning converts in place, a few thousand values at a time.
            vectors[start : start + count] = vector_rows(chunk)
            present[start : start + count] = np.asarray(chunk.is_valid(), dtype=bool)
            start += count
        vectors[~present] = 0.0
        norms = np.linalg.norm(vectors, axis=1)
        # A zero vector has no direction: nothing is near it.
        present &= norms > 0
        vectors[present] /= norms[present, None]
        return cls.from_vectors(vectors, present)

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, present: np.ndarray) -> InMemoryVectors:
        """Sign codes for unit-length ``vectors`` (rows where ``present`` is False are ignored)."""
        mean = (
            vectors[present].mean(axis=0).astype(np.float32)
            if present.any()
            else np.zeros(vectors.shape[1], dtype=np.float32)
        )
        codes = np.zeros((len(vectors), _code_bytes(vectors.shape[1])), dtype=np.uint8)
        for offset in range(0, len(vectors), LOAD_BLOCK_ROWS):
            block = slice(offset, offset + LOAD_BLOCK_ROWS)
            bits = np.packbits(vectors[block] > mean, axis=1)
            codes[block, : bits.shape[1]] = bits
        return cls(
            vectors=vectors,
            present=present,
            mean=mean,
            codes=np.ascontiguousarray(codes.view(np.uint64).T),
        )

    def sign_code(self, query: np.ndarray) -> np.ndarray:
        bits = np.packbits(query > self.mean)
        padded = np.zeros(_code_bytes(len(query)), dtype=np.uint8)
        padded[: len(bits)] = bits
        return padded.view(np.uint64)

    def nearest(
        self, query: np.ndarray, count: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosine similarities of the ``count`` nearest packages, best first.

        ``query`` is unit length; ``allowed`` (a row mask) applies before the count, so a
        filter never empties the result while allowed packages remain.
        """
        eligible = self.present if allowed is None else self.present & allowed
        candidates_wanted = max(RERANK_CANDIDATES, 4 * count)
        if np.count_nonzero(eligible) <= candidates_wanted:
            candidates = np.flatnonzero(eligible)
        else:
            code = self.sign_code(query)
            distance = np.zeros(self.rows, dtype=np.uint16)
            for word in range(self.codes.shape[0]):
                distance += np.bitwise_count(self.codes[word] ^ code[word])
            if allowed is not None or not self.present.all():
                distance[~eligible] = _FAR
            candidates = np.argpartition(distance, candidates_wanted)[:candidates_wanted]
        if len(candidates) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        with _one_blas_thread():
            similarity = self.vectors[candidates] @ query.astype(np.float32, copy=False)
        # A full sort (about 65 us for 2,500) rather than a partition: of packages tied at
        # the cut (identical descriptions are common), the lowest rows are kept.
        order = np.lexsort((candidates, -similarity))[:count]
        return candidates[order].astype(np.int64), similarity[order]


def vector_rows(vectors: pa.FixedSizeListArray) -> np.ndarray:
    """A fixed-size-list array's values as a ``(rows, dimensions)`` matrix, without a copy.

    A fixed-size list stores every row, null or not, so the matrix has a row for each (what
    a null row holds is unspecified: mask it with ``is_valid()``).
    """
    dimensions = vectors.type.list_size
    flat = vectors.values.slice(vectors.offset * dimensions, len(vectors) * dimensions)
    return flat.to_numpy(zero_copy_only=False).reshape(len(vectors), dimensions)


def memory_bytes(rows: int, dimensions: int) -> int:
    """What :meth:`InMemoryVectors.from_arrow` holds for ``rows`` vectors of ``dimensions``."""
    return rows * (dimensions * 4 + _code_bytes(dimensions) + 1)


def _code_bytes(dimensions: int) -> int:
    """Bytes of a sign code, rounded up to whole 64-bit words."""
    return -(-dimensions // 64) * 8

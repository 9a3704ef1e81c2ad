"""Binary Morgan fingerprints and fast Tanimoto similarities.

The Tanimoto (Jaccard) similarity of two binary vectors is
``T(x, y) = <x, y> / (|x|^2 + |y|^2 - <x, y>)`` (for binary vectors ``|x|^2`` is
the number of set bits). It is a positive-definite kernel on binary vectors
(Gower 1971; Ralaivola et al., Neural Networks 18, 1093, 2005), so it can serve
directly as a GP covariance.

A Morgan fingerprint with 2048 bits has only ~20-60 bits set for drug-like or small
aromatic molecules, so the similarity of a 20,000-row pool to ``m`` query molecules
is computed with a sparse-times-dense product (``nnz * m`` multiply-adds) instead of
a dense ``20,000 x 2048 x m`` product: :class:`FingerprintIndex`.

Importing this module is cheap; rdkit and scipy load inside the functions.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import scipy.sparse


def morgan_fingerprints(smiles: list[str], n_bits: int = 2048, radius: int = 2) -> np.ndarray:
    """Hashed Morgan (ECFP-like) bit fingerprints.

    Args:
        smiles: molecules as SMILES, length ``n``.
        n_bits: fingerprint length (bits after folding).
        radius: Morgan radius (2 ~ ECFP4; Rogers & Hahn, J. Chem. Inf. Model. 50,
            742, 2010).

    Returns:
        ``(n, n_bits)`` uint8 array of 0/1. An invalid SMILES gives an all-zero row
        (such a molecule has zero similarity to everything).

    Raises:
        ValueError: if ``n_bits`` or ``radius`` is not a positive integer.
    """
    if int(n_bits) != n_bits or n_bits < 1:
        raise ValueError(f"n_bits must be a positive integer, got {n_bits!r}")
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdFingerprintGenerator

    RDLogger.DisableLog("rdApp.*")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=int(radius), fpSize=int(n_bits))
    out = np.zeros((len(smiles), int(n_bits)), dtype=np.uint8)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s) if isinstance(s, str) and s else None
        if mol is not None:
            out[i] = gen.GetFingerprintAsNumPy(mol).astype(np.uint8)
    return out


def tanimoto_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense Tanimoto similarity between the rows of two binary matrices.

    Args:
        a: ``(n, d)`` 0/1 array.
        b: ``(m, d)`` 0/1 array.

    Returns:
        ``(n, m)`` float64 similarities in [0, 1]; a pair of all-zero rows gives 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def fingerprint_digest(fps: np.ndarray) -> str:
    """A short content hash of a fingerprint matrix (used as a cache key)."""
    packed = np.packbits(np.asarray(fps, dtype=np.uint8) != 0, axis=1)
    h = hashlib.blake2b(packed.tobytes(), digest_size=12)
    h.update(str(fps.shape).encode())
    return h.hexdigest()


class FingerprintIndex:
    """A sparse (CSR) copy of a fingerprint matrix for fast Tanimoto columns.

    Building the index costs one pass over the matrix (~0.3 s for 20,000 x 2048);
    afterwards :meth:`similarity_to` costs ``nnz(pool) * m`` multiply-adds for ``m``
    query rows (~0.25 s for 20,000 x 1,000 on one core), and the caller caches
    columns so that each molecule is compared with the pool only once.

    Args:
        fps: ``(n, d)`` 0/1 array (any integer or float dtype).
    """

    def __init__(self, fps: np.ndarray) -> None:
        import scipy.sparse

        fps = np.asarray(fps)
        if fps.ndim != 2:
            raise ValueError(f"fingerprints must be a 2-d array, got shape {fps.shape}")
        self.shape: tuple[int, int] = (int(fps.shape[0]), int(fps.shape[1]))
        self.digest = fingerprint_digest(fps)
        self.csr: scipy.sparse.csr_matrix = scipy.sparse.csr_matrix(
            (fps != 0).astype(np.float32)
        )
        self.n_on = np.asarray(self.csr.sum(axis=1)).ravel().astype(np.float32)

    def similarity_to(self, query: np.ndarray) -> np.ndarray:
        """Tanimoto similarity of every indexed row to each query row.

        Args:
            query: ``(m, d)`` 0/1 array with the same ``d`` as the index.

        Returns:
            ``(n, m)`` float32 similarities.
        """
        q = (np.asarray(query) != 0).astype(np.float32)
        if q.ndim != 2 or q.shape[1] != self.shape[1]:
            raise ValueError(f"query must have shape (m, {self.shape[1]}), got {q.shape}")
        inter = np.asarray(self.csr @ q.T, dtype=np.float32)
        union = self.n_on[:, None] + q.sum(1)[None, :] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class SimilarityCache:
    """Tanimoto columns of one pool against every molecule seen, computed once each.

    Columns live in a ``(n_pool, capacity)`` float32 buffer that doubles when full,
    indexed by pool row through :attr:`col_of`. Rebuilt when a different fingerprint
    matrix is passed.
    """

    def __init__(self, fps: np.ndarray) -> None:
        self.index = FingerprintIndex(fps)
        self.fps = fps
        self.col_of: dict[int, int] = {}
        self._buf = np.zeros((fps.shape[0], 64), dtype=np.float32)
        self.n_cols = 0

    @property
    def cols(self) -> np.ndarray:
        """``(n_pool, n_cols)`` similarities (a view; do not keep across :meth:`ensure`)."""
        return self._buf[:, : self.n_cols]

    def ensure(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Column positions of pool ``rows`` (computing the missing ones)."""
        rows = np.asarray(rows, dtype=np.int64)
        missing = [r for r in dict.fromkeys(rows.tolist()) if r not in self.col_of]
        if missing:
            new = self.index.similarity_to(self.fps[missing])
            need = self.n_cols + len(missing)
            if need > self._buf.shape[1]:
                buf = np.zeros((self._buf.shape[0], max(need, 2 * self._buf.shape[1])),
                               dtype=np.float32)
                buf[:, : self.n_cols] = self.cols
                self._buf = buf
            self._buf[:, self.n_cols: need] = new
            for k, r in enumerate(missing):
                self.col_of[r] = self.n_cols + k
            self.n_cols = need
        return np.array([self.col_of[r] for r in rows.tolist()], dtype=np.int64)

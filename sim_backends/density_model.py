"""A learned SCF starting guess for dimers: kernel ridge regression of the density-matrix
correction over the superposition of monomer densities, trained on converged dimers.

Contracts:

* :class:`DensityCorrectionModel` learns, per pair type (elements of the dimer in atom
  order and SCF settings: the same ``key`` as :class:`~sim_backends.scf_guess.DimerReferences`),
  the corrections ``D_conv - D_sup`` of the dimer SCF (``"dimer"``, ``D_sup`` =
  block_diag(D_A, D_B) of the two monomers' converged densities) and of its counterpoise
  monomers (``"cp_a"``: block_diag(D_A, 0), ``"cp_b"``: block_diag(0, D_B)).
* Local frame: every correction is stored in the frame of the first molecule (its
  orthogonal fit onto the pair type's reference copy of that molecule, proper when a
  proper fit is within :data:`~sim_backends.scf_guess.MAX_FIT_RMSD_A`, else improper),
  AO blocks carried by :func:`~sim_backends.scf_guess.ao_rotation`, so the model sees
  the correction as a function of the relative geometry only (the reference copy is
  put in a frame fixed by its labelled atoms, so every worker's model has the same one) (a prediction may use
  the other handedness when it also fits: a mirror image has the mirrored density). The descriptor is the
  second molecule's atom coordinates in that frame (A), divided by sqrt(n_atoms_B): the
  Euclidean distance of two descriptors is the RMSD of the second molecule between
  them. For a dimer of two identical molecules both atom orders are tried and the one
  nearer the training set is used.
* Model: Gaussian-kernel ridge regression, ``y(x) = k(x)^T (K + ridge I)^-1 Y`` with
  ``k = exp(-d^2 / (2 l^2))``; the length scale ``l`` is chosen among
  :data:`LENGTH_SCALES_A` by the closed-form leave-one-out error whenever the training
  set of a pair type has grown by half since the last choice. Far from all training
  data (nearest descriptor farther than ``max_distance_A``) there is no prediction
  (``predict`` returns None) and the caller uses its own guess.
* ``add`` takes one converged dimer; ``predict`` returns the corrected densities in the
  AO basis of the given dimer; ``save``/``load`` write and read one compressed ``.npz``
  (float32 targets, packed lower triangles; written to a temporary file and moved into
  place), and predictions after ``load`` equal those before it. A pickled model carries
  only its training data (no factorisations), so it travels to Ray workers compactly.
* Bounded: at most ``max_train`` dimers per pair type (the oldest dropped).
* Campaign copy: :func:`sync` merges a worker's model with the model file in the
  campaign directory and writes the union back under a file lock (the ``dft-crystal``
  backend does this before and after each ``scf_guess="learned"`` evaluation whose
  ``density_model`` parameter names the file), so every worker on that file system
  trains on every converged dimer of the campaign.

Spherical AO bases only (PySCF's default; Cartesian bases are refused with ValueError).
numpy/scipy/PySCF are imported inside functions.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: candidate kernel length scales (A of RMSD of the second molecule in the first's frame)
LENGTH_SCALES_A = (0.05, 0.1, 0.2, 0.4, 0.8)
#: the density kinds a training dimer carries (counterpoise monomers optional)
KINDS = ("dimer", "cp_a", "cp_b")
FORMAT_VERSION = 1
#: the campaign's model file in its directory (runs/<name>/)
MODEL_FILE = "density_model.npz"


def _frame(ref_A: np.ndarray, xyz_A: np.ndarray, dets: tuple[int, ...] = (1, -1)
           ) -> tuple[np.ndarray, float] | None:
    """Orthogonal fit of the first molecule's reference onto ``xyz_A``: proper when it
    fits, else improper (a deterministic frame also for planar molecules); ``dets``
    restricts the handedness."""
    from sim_backends.scf_guess import MAX_FIT_RMSD_A, orthogonal_fit

    for det in dets:
        R, rmsd = orthogonal_fit(ref_A, xyz_A, det)
        if rmsd <= MAX_FIT_RMSD_A:
            return R, rmsd
    return None


def _canonical(xyz_A: np.ndarray) -> np.ndarray:
    """A molecule's coordinates in a frame fixed by its labelled atoms (centroid at the
    origin, x towards the first atom off the centroid, xy-plane through the first atom
    off that axis, right-handed): the same for every rigid copy in any orientation, so
    models trained in different workers share one reference."""
    import numpy as np

    p = xyz_A - xyz_A.mean(axis=0)
    axes: list[np.ndarray] = []
    for v in p:
        for e in axes:
            v = v - (v @ e) * e
        if np.linalg.norm(v) > 1e-3:
            axes.append(v / np.linalg.norm(v))
        if len(axes) == 2:
            break
    while len(axes) < 2:  # a single atom or a linear molecule: any completion
        trial = np.eye(3)[int(np.argmin(np.abs(axes[0]))) if axes else 0]
        for e in axes:
            trial = trial - (trial @ e) * e
        axes.append(trial / np.linalg.norm(trial))
    frame = np.array([axes[0], axes[1], np.cross(axes[0], axes[1])])
    return p @ frame.T


def _pack(m: np.ndarray) -> np.ndarray:
    import numpy as np

    return m[np.tril_indices(m.shape[0])]


def _unpack(v: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    out = np.zeros((n, n))
    out[np.tril_indices(n)] = v
    return out + np.tril(out, -1).T


class DensityCorrectionModel:
    """Kernel ridge model of dimer density corrections over the monomer superposition.

    Args:
        ridge: ridge (noise) term added to the kernel matrix's diagonal (the kernel's
            diagonal is 1).
        max_distance_A: no prediction when the nearest training descriptor is farther
            (RMSD of the second molecule in the first's frame, A).
        max_train: training dimers kept per pair type (oldest dropped).
    """

    def __init__(self, ridge: float = 1e-6, max_distance_A: float = 0.5, max_train: int = 256) -> None:
        if ridge <= 0 or max_distance_A <= 0 or max_train < 1:
            raise ValueError("ridge and max_distance_A must be > 0 and max_train >= 1")
        self.ridge = float(ridge)
        self.max_distance_A = float(max_distance_A)
        self.max_train = int(max_train)
        # key -> {"ref_a", "n_a", "nao", "X" (N, d), "Y": {kind: (N, m) float32}, "length_A", "n_at_choice"}
        self._types: dict[tuple, dict[str, Any]] = {}
        self._cache: dict[tuple, tuple[float, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}

    def n_train(self, key: tuple | None = None) -> int:
        """Training dimers of one pair type (or of all)."""
        if key is not None:
            return len(self._types[key]["X"]) if key in self._types else 0
        return sum(len(t["X"]) for t in self._types.values())

    def summary(self) -> dict[str, Any]:
        """Pair types, training dimers, bytes of training data and the chosen length scales (A)."""
        return {"n_pair_types": len(self._types), "n_train": self.n_train(), "train_bytes": self.nbytes(),
                "length_scales_A": sorted({t["length_A"] for t in self._types.values()})}

    def nbytes(self) -> int:
        """Bytes of the training data (descriptors and targets)."""
        return sum(t["X"].nbytes + sum(y.nbytes for y in t["Y"].values()) for t in self._types.values())

    # -- geometry ------------------------------------------------------------------

    def _placement(self, t: dict[str, Any], mol: Any, xyz_A: np.ndarray, swapped: bool,
                   dets: tuple[int, ...] = (1, -1)) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(descriptor, U of the whole dimer basis, AO permutation) for one atom order
        and frame handedness."""
        import numpy as np

        from sim_backends.scf_guess import ao_rotation

        n_a, n = t["n_a"], len(xyz_A)
        order = np.r_[np.arange(n_a, n), np.arange(n_a)] if swapped else np.arange(n)
        xyz = xyz_A[order]
        fit = _frame(t["ref_a"], xyz[:n_a], dets)
        if fit is None:
            return None
        R = fit[0]
        x = ((xyz[n_a:] - xyz[:n_a].mean(axis=0)) @ R).ravel() / np.sqrt(n - n_a)
        nao = mol.nao
        if swapped:
            first = mol.aoslice_by_atom()[n_a][2]
            p = np.r_[np.arange(first, nao), np.arange(first)]
        else:
            p = np.arange(nao)
        return x, ao_rotation(mol, R), p

    def _check(self, mol: Any) -> None:
        if mol.cart:
            raise ValueError("the density model needs a spherical AO basis")

    # -- training -------------------------------------------------------------------

    def add(self, key: tuple, mol: Any, xyz_A: np.ndarray, n_a: int, dm_a: np.ndarray, dm_b: np.ndarray,
            converged: dict[str, np.ndarray]) -> None:
        """Train on one converged dimer.

        Args:
            key: pair type (hashable; same elements and settings share a model).
            mol: PySCF molecule of the dimer (first molecule's ``n_a`` atoms first).
            xyz_A: its coordinates (n, 3), A.
            n_a: atoms of the first molecule.
            dm_a, dm_b: converged monomer densities in their own AO bases.
            converged: converged densities in the dimer basis, ``"dimer"`` and optionally
                ``"cp_a"``, ``"cp_b"``.
        """
        import numpy as np
        from scipy.linalg import block_diag

        self._check(mol)
        xyz_A = np.asarray(xyz_A, float)
        t = self._types.get(key)
        if t is None:
            t = {"ref_a": _canonical(xyz_A[:n_a]), "n_a": int(n_a), "nao": int(mol.nao),
                 "X": np.zeros((0, 3 * (len(xyz_A) - n_a))), "Y": {}, "length_A": 0.2, "n_at_choice": 0}
        if t["n_a"] != n_a or t["nao"] != mol.nao:
            raise ValueError("dimer does not match its pair type (atom split or basis size differ)")
        place = self._placement(t, mol, xyz_A, False)
        if place is None:
            return  # first molecule not a rigid copy of the pair type's reference
        x, u, _ = place
        za, zb = np.zeros_like(dm_a), np.zeros_like(dm_b)
        sup = {"dimer": block_diag(dm_a, dm_b), "cp_a": block_diag(dm_a, zb), "cp_b": block_diag(za, dm_b)}
        new_y = {kind: _pack(u.T @ (np.asarray(converged[kind]) - sup[kind]) @ u).astype(np.float32)
                 for kind in KINDS if kind in converged}
        n_old = len(t["X"])
        kinds = set(new_y) if n_old == 0 else set(t["Y"])
        if set(new_y) != kinds:
            raise ValueError(f"training dimer has densities {sorted(new_y)}, the pair type {sorted(kinds)}")
        t["X"] = np.vstack([t["X"], x[None]])[-self.max_train:]
        t["Y"] = {k: np.vstack([t["Y"][k], new_y[k][None]])[-self.max_train:] if n_old else new_y[k][None]
                  for k in new_y}
        self._types[key] = t
        self._cache.pop(key, None)

    def _choose_length(self, t: dict[str, Any]) -> None:
        """Length scale of least leave-one-out error (closed form for kernel ridge)."""
        import numpy as np

        n = len(t["X"])
        if n < 4 or n < 1.5 * t["n_at_choice"]:
            return
        d2 = np.sum((t["X"][:, None] - t["X"][None]) ** 2, axis=-1)
        y = np.hstack([t["Y"][k] for k in sorted(t["Y"])]).astype(float)
        best = None
        for length in LENGTH_SCALES_A:
            kinv = np.linalg.inv(np.exp(-d2 / (2 * length**2)) + self.ridge * np.eye(n))
            loo = (kinv @ y) / np.diag(kinv)[:, None]
            err = float(np.sum(loo**2))
            if best is None or err < best[0]:
                best = (err, length)
        t["length_A"], t["n_at_choice"] = best[1], n

    def _factor(self, key: tuple) -> tuple[float, Any]:
        import numpy as np
        from scipy.linalg import cho_factor

        if key not in self._cache:
            t = self._types[key]
            self._choose_length(t)
            d2 = np.sum((t["X"][:, None] - t["X"][None]) ** 2, axis=-1)
            k = np.exp(-d2 / (2 * t["length_A"] ** 2)) + self.ridge * np.eye(len(d2))
            self._cache[key] = (t["length_A"], cho_factor(k))
        return self._cache[key]

    # -- prediction -----------------------------------------------------------------

    def predict(self, key: tuple, mol: Any, xyz_A: np.ndarray, n_a: int, dm_a: np.ndarray,
                dm_b: np.ndarray) -> tuple[dict[str, np.ndarray], float] | None:
        """Guess densities for a new dimer of a known pair type.

        Args: as :meth:`add` (without the converged densities).

        Returns:
            (``{kind: superposition + predicted correction}`` in ``mol``'s AO basis for
            each kind trained, distance in A to the nearest training dimer), or None
            (unknown pair type, first molecule not a rigid copy, or no training dimer
            within ``max_distance_A``).
        """
        import numpy as np
        from scipy.linalg import block_diag, cho_solve

        self._check(mol)
        t = self._types.get(key)
        if t is None or t["n_a"] != n_a or t["nao"] != mol.nao or len(xyz_A) - n_a != t["X"].shape[1] // 3:
            return None
        xyz_A = np.asarray(xyz_A, float)
        orders = [False]
        if 2 * n_a == len(xyz_A) and key[0][:n_a] == key[0][n_a:]:
            orders.append(True)
        best = None
        for swapped, det in itertools.product(orders, (1, -1)):
            # a mirror image of a training dimer has the mirrored density: for a planar
            # first molecule both frames fit, and the nearer one is used
            place = self._placement(t, mol, xyz_A, swapped, (det,))
            if place is None:
                continue
            d = float(np.sqrt(np.min(np.sum((t["X"] - place[0]) ** 2, axis=1))))
            if best is None or d < best[0]:
                best = (d, swapped, place)
        if best is None or best[0] > self.max_distance_A:
            return None
        dist, swapped, (x, u, p) = best
        length, factor = self._factor(key)
        kx = np.exp(-np.sum((t["X"] - x) ** 2, axis=1) / (2 * length**2))
        w = cho_solve(factor, kx)
        if swapped:  # the first molecule of the model is the dimer's second one
            dm_a, dm_b = dm_b, dm_a
        za, zb = np.zeros_like(dm_a), np.zeros_like(dm_b)
        sup = {"dimer": block_diag(dm_a, dm_b), "cp_a": block_diag(dm_a, zb), "cp_b": block_diag(za, dm_b)}
        inv = np.argsort(p)
        out = {}
        for kind, y in t["Y"].items():
            corr = u @ _unpack(w @ y.astype(float), mol.nao) @ u.T
            guess = sup[kind] + corr  # in the model's molecule order
            if swapped:
                kind = {"cp_a": "cp_b", "cp_b": "cp_a"}.get(kind, kind)
            out[kind] = guess[np.ix_(inv, inv)]
        return out, dist

    # -- persistence ----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (.npz, compressed), atomically."""
        import numpy as np

        path = Path(path)
        meta = {"format": FORMAT_VERSION, "ridge": self.ridge, "max_distance_A": self.max_distance_A,
                "max_train": self.max_train, "types": []}
        arrays: dict[str, np.ndarray] = {}
        for i, (key, t) in enumerate(self._types.items()):
            meta["types"].append({"key": json.loads(json.dumps(key)), "n_a": t["n_a"], "nao": t["nao"],
                                  "length_A": t["length_A"], "n_at_choice": t["n_at_choice"],
                                  "kinds": sorted(t["Y"])})
            arrays[f"t{i}_ref_a"] = t["ref_a"]
            arrays[f"t{i}_X"] = t["X"]
            for kind, y in t["Y"].items():
                arrays[f"t{i}_{kind}"] = y
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DensityCorrectionModel:
        """Read a model written by :meth:`save`; ValueError when the file is not one."""
        import numpy as np

        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path} is not a density model file ({' '.join(str(exc).split())[:80]})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: density model format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        model = cls(meta["ridge"], meta["max_distance_A"], meta["max_train"])

        def tup(v: Any) -> Any:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v

        for i, t in enumerate(meta["types"]):
            model._types[tup(t["key"])] = {
                "ref_a": arrays[f"t{i}_ref_a"], "n_a": t["n_a"], "nao": t["nao"], "X": arrays[f"t{i}_X"],
                "Y": {k: arrays[f"t{i}_{k}"] for k in t["kinds"]}, "length_A": t["length_A"],
                "n_at_choice": t["n_at_choice"]}
        return model


def merge(model: DensityCorrectionModel, other: DensityCorrectionModel) -> int:
    """Add ``other``'s training dimers that ``model`` does not hold (same descriptor and
    targets); returns how many were added. Pair types whose reference frames differ
    are taken only when ``model`` does not know them."""
    import numpy as np

    n_added = 0
    for key, t in other._types.items():
        mine = model._types.get(key)
        if mine is None:
            model._types[key] = {**t, "X": t["X"].copy(), "Y": {k: y.copy() for k, y in t["Y"].items()}}
            n_added += len(t["X"])
        elif (mine["n_a"], mine["nao"], sorted(mine["Y"])) == (t["n_a"], t["nao"], sorted(t["Y"])) \
                and np.allclose(mine["ref_a"], t["ref_a"], atol=1e-6):
            seen = {(x.tobytes(), mine["Y"]["dimer"][i].tobytes()) for i, x in enumerate(mine["X"])}
            new = [i for i, x in enumerate(t["X"]) if (x.tobytes(), t["Y"]["dimer"][i].tobytes()) not in seen]
            if new:
                mine["X"] = np.vstack([mine["X"], t["X"][new]])[-model.max_train:]
                mine["Y"] = {k: np.vstack([mine["Y"][k], t["Y"][k][new]])[-model.max_train:] for k in mine["Y"]}
                n_added += len(new)
        else:
            continue
        model._cache.pop(key, None)
    return n_added


def sync(model: DensityCorrectionModel, path: str | Path) -> dict[str, Any]:
    """Exchange training dimers with the model file at ``path`` (the campaign's copy):
    under an exclusive lock (``path`` + ".lock"), merge the file's dimers into ``model``,
    then write ``model`` back. Returns ``{"n_from_file", "n_train", "error"}``; an
    unreadable file is replaced (its reason in "error"), never fatal."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"n_from_file": 0, "error": None}
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                try:
                    out["n_from_file"] = merge(model, DensityCorrectionModel.load(path))
                except ValueError as exc:
                    out["error"] = str(exc)
            model.save(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    out["n_train"] = model.n_train()
    return out


#: the worker process's learned model (``scf_guess="learned"`` without an explicit model)
MODEL = DensityCorrectionModel()

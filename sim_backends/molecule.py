"""Molecule preparation: SMILES validation, 3D conformers and molecule pools.

Every molecule enters the agent as SMILES. :func:`validate_smiles` decides once, with a
one-line :class:`~sim_backends.base.SetupError`, whether the physics backends can ever
treat it (a single closed-shell neutral fragment made of the elements the
semi-empirical and DFT levels are parametrised for, not too large). :func:`embed_conformer`
turns it into a reproducible 3D starting geometry with RDKit's ETKDG distance-geometry
embedding (Riniker & Landrum, J. Chem. Inf. Model. 55, 2562 (2015)) cleaned up with the
MMFF94 force field (Halgren, J. Comput. Chem. 17, 490 (1996)), falling back to UFF
(Rappe et al., J. Am. Chem. Soc. 114, 10024 (1992)) for molecules MMFF94 does not type.

RDKit is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sim_backends.base import SUPPORTED_ELEMENTS, SetupError

if TYPE_CHECKING:
    import numpy as np
    from rdkit import Chem

#: default upper limit on heavy (non-hydrogen) atoms per molecule
MAX_HEAVY_ATOMS = 40
#: longest SMILES handed to RDKit (its parser is slow on huge strings: a line of a
#: million ``C(`` takes a minute to reject)
MAX_SMILES_CHARS = 2000


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _parse(smiles: str) -> Chem.Mol:
    """Parse SMILES with RDKit logging silenced; SetupError if RDKit rejects it."""
    from rdkit import Chem, RDLogger

    if not isinstance(smiles, str) or not smiles.strip():
        raise SetupError(f"invalid SMILES {_short(repr(smiles))}: empty")
    if len(smiles) > MAX_SMILES_CHARS:
        raise SetupError(f"invalid SMILES '{_short(smiles)}': {len(smiles):,} characters; "
                         f"the limit is {MAX_SMILES_CHARS:,}")
    if any(c.isspace() for c in smiles.strip()):
        raise SetupError(f"invalid SMILES '{_short(smiles)}': contains whitespace")
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        raise SetupError(f"invalid SMILES '{_short(smiles)}'")
    return mol


@lru_cache(maxsize=1 << 16)
def atom_counts(smiles: str) -> tuple[int, int, int]:
    """``(n_H, n_light, n_heavier)`` atoms of a molecule, hydrogens included: hydrogens,
    other atoms up to neon (Z <= 10), and atoms beyond it; ``(0, 0, 0)`` for a SMILES
    RDKit cannot read. Cached per SMILES: size-based cost estimates price every molecule
    of a pool at every level, so each SMILES is parsed once per process."""
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    try:
        mol = _parse(smiles)
    except SetupError:
        return 0, 0, 0
    table = Chem.GetPeriodicTable()
    n_h = n_light = n_heavier = 0
    for symbol, n in re.findall(r"([A-Z][a-z]?)(\d*)", CalcMolFormula(mol)):
        k = int(n) if n else 1
        if symbol == "H":
            n_h += k
        elif table.GetAtomicNumber(symbol) <= 10:
            n_light += k
        else:
            n_heavier += k
    return n_h, n_light, n_heavier


def check_elements(what: str, symbols: object) -> None:
    """Refuse elements outside :data:`~sim_backends.base.SUPPORTED_ELEMENTS` in one line,
    ``WHAT contains unsupported element(s) Pt; supported: C Cl F H N O S`` (SetupError)."""
    bad = sorted(set(symbols) - SUPPORTED_ELEMENTS)
    if bad:
        raise SetupError(f"{what} contains unsupported element(s) {', '.join(bad)}; "
                         f"supported: {' '.join(sorted(SUPPORTED_ELEMENTS))}")


def validate_smiles(smiles: str, max_heavy_atoms: int = MAX_HEAVY_ATOMS) -> str:
    """Check that a molecule can be treated by the physics backends.

    Args:
        smiles: the molecule as SMILES.
        max_heavy_atoms: largest accepted number of non-hydrogen atoms.

    Returns:
        The RDKit canonical SMILES (hydrogens implicit).

    Raises:
        SetupError: with a one-line message, the first of these that applies: the
            SMILES is longer than :data:`MAX_SMILES_CHARS` or does not parse; it contains
            an element outside :data:`~sim_backends.base.SUPPORTED_ELEMENTS` (named in
            the message; tested before the fragments, so a metal complex or salt written
            in fragments is refused for its element); it has more than one fragment,
            carries a net charge (formal charges summing to zero, as in nitro groups, are
            fine), has unpaired electrons (radical), or has more than
            ``max_heavy_atoms`` heavy atoms.
    """
    from rdkit import Chem

    mol = _parse(smiles)
    s = _short(smiles)
    # elements first: no rewriting can make an unsupported element treatable, while a
    # salt or complex written in fragments ([Fe+2].c1cc[cH-]c1...) would only meet it next
    check_elements(f"SMILES '{s}'", [a.GetSymbol() for a in mol.GetAtoms()])
    n_frags = len(Chem.GetMolFrags(mol))
    if n_frags != 1:
        raise SetupError(f"SMILES '{s}' has {n_frags} fragments; give one molecule")
    charge = Chem.GetFormalCharge(mol)
    if charge != 0:
        raise SetupError(f"SMILES '{s}' has net charge {charge:+d}; give a neutral molecule")
    n_radical = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    if n_radical:
        raise SetupError(f"SMILES '{s}' has {n_radical} unpaired electron(s); give a closed-shell molecule")
    n_heavy = mol.GetNumHeavyAtoms()
    if n_heavy > max_heavy_atoms:
        raise SetupError(f"SMILES '{s}' has {n_heavy} heavy atoms; the limit is {max_heavy_atoms}")
    return Chem.MolToSmiles(mol)


def embed_conformer(smiles: str, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """One 3D conformer with explicit hydrogens, reproducible for a given seed.

    ETKDG v3 embedding followed by an MMFF94 minimisation (UFF when MMFF94 has no
    parameters for the molecule), both single-threaded so the result depends only on
    the SMILES and the seed.

    Args:
        smiles: the molecule (validated with :func:`validate_smiles` first).
        seed: random seed of the distance-geometry embedding.

    Returns:
        ``(symbols, coords_A)``: element symbols (length n, heavy atoms first, then
        hydrogens as RDKit adds them) and Cartesian coordinates, shape (n, 3), in
        angstrom.

    Raises:
        SetupError: invalid molecule, or no 3D embedding could be generated.
    """
    import numpy as np
    from rdkit import Chem
    from rdkit.Chem import AllChem

    validate_smiles(smiles, max_heavy_atoms=10**6)
    mol = Chem.AddHs(_parse(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = 1
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise SetupError(f"could not embed a 3D conformer for '{_short(smiles)}'")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, mmffVariant="MMFF94", maxIters=2000)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    coords_A = np.asarray(mol.GetConformer().GetPositions(), dtype=float).reshape(-1, 3)
    return symbols, coords_A


def to_xyz(symbols: list[str], coords_A: np.ndarray, comment: str = "") -> str:
    """XYZ text (angstrom) of a geometry: symbols length n, coords_A shape (n, 3)."""
    lines = [str(len(symbols)), " ".join(comment.split())]
    lines += [f"{s:2s} {x:12.6f} {y:12.6f} {z:12.6f}" for s, (x, y, z) in zip(symbols, coords_A)]
    return "\n".join(lines) + "\n"


def read_pool(path: str | Path) -> list[tuple[str, str | None]]:
    """Read a molecule pool file without validating its entries.

    One molecule per line: SMILES, then optionally whitespace and a name (the rest of
    the line). Blank lines, lines starting with ``#`` and trailing comments starting
    with whitespace then ``#`` are ignored (``#`` inside SMILES is a triple bond, so
    ``C#C acetylene`` is a molecule). Invalid SMILES are
    returned as written, so the campaign can validate and record them.

    Args:
        path: the pool file (e.g. ``examples/pool.smi``).

    Returns:
        ``[(smiles, name or None), ...]`` in file order.

    Raises:
        FileNotFoundError: if ``path`` does not exist (one-line message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pool file not found: {path}")
    entries: list[tuple[str, str | None]] = []
    for raw in path.read_text().splitlines():
        line = re.split(r"\s#", raw, maxsplit=1)[0].strip()
        if line.startswith("#"):
            continue
        if not line:
            continue
        parts = line.split(None, 1)
        entries.append((parts[0], parts[1].strip() if len(parts) > 1 else None))
    return entries

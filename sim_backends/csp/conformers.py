"""Conformer ensembles of flexible molecules for crystal structure prediction.

:func:`build_ensemble` turns a SMILES into a :class:`ConformerEnsemble`:

1. RDKit ETKDG (v3) embeds ``n_embed`` conformers (seeded), each optimised with MMFF94;
2. each is relaxed with GFN2-xTB (tblite, ASE BFGS to 0.01 eV/A, the same relaxation as the
   rigid-molecule path :func:`~sim_backends.csp.rigid.gfn2_relaxed_geometry`); a conformer
   whose bond graph changes on relaxation (e.g. a proton transfer) is dropped;
3. duplicates are removed: two conformers are the same when the symmetry-aware RMSD
   (RDKit ``GetBestRMS``) of their heavy atoms and polar hydrogens (on N, O, S) is below
   ``rmsd_A``; polar hydrogens are kept because an O-H rotamer changes the hydrogen
   bonding a crystal can form; a conformer and its mirror image are one conformer (the
   mirror-image crystal has the same lattice energy);
4. conformers within ``window_kjmol`` of the lowest GFN2-xTB energy are kept (energies
   relative to that global minimum, the level recorded in :attr:`ConformerEnsemble.level`);
5. each kept conformer becomes a :class:`~sim_backends.csp.rigid.RigidMolecule` (principal
   frame, W99 types) with its own charges (``"resp"``: HF/6-31G* ESP fit per conformer,
   cached by geometry in the charge cache; ``"xtb"``; ``"none"``).

Flexible bonds (:func:`count_flexible_bonds`) are the rotatable bonds of the rigidity rule of
:mod:`sim_backends.csp.rigid` plus the cross-conjugated links of :func:`cross_conjugated_bonds`
(the C(aryl)-N bond of an anilide such as paracetamol, the O-aryl bond of an aryl ester such
as aspirin). Their number is limited by ``max_rotatable_bonds`` (default
:data:`MAX_ROTATABLE_BONDS_DEFAULT`): the conformer space and the trials needed grow quickly
with it, so a molecule beyond the limit is refused with a one-line
:class:`~sim_backends.base.SetupError` unless the limit is raised.

Importing this module is cheap; rdkit and tblite are imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim_backends.base import SetupError
from sim_backends.csp.intramolecular import INTRA_LEVEL, TorsionSet

#: default limit of rotatable bonds for flexible CSP
MAX_ROTATABLE_BONDS_DEFAULT = 4
#: default conformer energy window (kJ/mol above the gas-phase global minimum, GFN2-xTB)
CONFORMER_WINDOW_DEFAULT = 10.0
#: level of theory of the conformer geometries and energies
ENSEMBLE_LEVEL = f"{INTRA_LEVEL}, geometries relaxed to 0.01 eV/A from ETKDG/MMFF94"


@dataclass(frozen=True, eq=False)
class Conformer:
    """One conformer of an ensemble.

    Attributes:
        index: position in the ensemble (0 = the gas-phase global minimum).
        molecule: the conformer as a rigid molecule (principal frame, charges, W99 types).
        energy_kjmol: GFN2-xTB energy relative to the ensemble's global minimum, kJ/mol.
        torsions_deg: values of the ensemble's flexible torsions (degrees), measured on
            ``molecule.coords_A``.
    """

    index: int
    molecule: Any
    energy_kjmol: float
    torsions_deg: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "energy_kjmol": round(float(self.energy_kjmol), 4),
                "torsions_deg": [round(float(t), 2) for t in self.torsions_deg],
                "charge_method": self.molecule.charge_method}


@dataclass(frozen=True, eq=False)
class ConformerEnsemble:
    """Conformers of one molecule within an energy window, lowest first.

    Attributes:
        smiles: canonical SMILES.
        conformers: the kept conformers (index 0 is the global minimum, energy 0).
        torsions: the molecule's flexible torsions (same atom order in every conformer).
        level: level of theory of the conformer energies and geometries.
        reference_energy_kjmol: total GFN2-xTB energy of the global minimum, kJ/mol (the zero
            of every intramolecular energy of this ensemble).
        window_kjmol: energy window applied.
        n_rotatable: flexible bonds (:func:`count_flexible_bonds`).
        n_embedded: ETKDG conformers embedded; ``n_unique``: unique after GFN2-xTB relaxation.
    """

    smiles: str
    conformers: tuple[Conformer, ...]
    torsions: TorsionSet
    level: str
    reference_energy_kjmol: float
    window_kjmol: float
    n_rotatable: int
    n_embedded: int
    n_unique: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.conformers)

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.conformers[0].molecule.symbols

    @property
    def mass_amu(self) -> float:
        return self.conformers[0].molecule.mass_amu

    def summary(self) -> list[dict[str, Any]]:
        """JSON-able list of the conformers (index, energy, torsions, charges)."""
        return [c.to_dict() for c in self.conformers]


#: an acyclic single bond from an sp2/aromatic carbon that is not itself a carbonyl, imine or
#: thiocarbonyl carbon to an N or O whose lone pair is conjugated with a C=O / C=S on its other side
_CROSS_CONJUGATED_SMARTS = ("[#6;X3,a;!$([#6]=[O,S,N])]-!@"
                            "[$([NX3]-!@[CX3]=[O,S]),$([OX2]-!@[CX3]=[O,S])]")


def cross_conjugated_bonds(mol: Any) -> list[tuple[int, int]]:
    """Cross-conjugated links of an RDKit molecule: (carbon, heteroatom) atom pairs.

    Rule: an acyclic single bond between an sp2 or aromatic carbon (not a C=O, C=N or C=S
    carbon) and an amide/carbamate/urea nitrogen or an ester oxygen whose lone pair is
    conjugated with a carbonyl (or thiocarbonyl) on its other side. The heteroatom shares its
    lone pair between two pi acceptors; the amide/ester resonance keeps the C(=O)-X bond
    planar (barriers of about 60-80 kJ/mol, not counted), so the link to the carbon side is
    only weakly conjugated: its torsion is soft and crystal packing sets it (acetanilides and
    paracetamol crystallise with C(aryl)-N torsions from about 0 to 40 degrees, aspirin's
    ester O-aryl torsion is far from planar). The rigidity rule of
    :mod:`sim_backends.csp.rigid` skips these bonds as conjugated (or, for an NH amide, as
    amide bonds), so they are added here. Directly conjugated links (aryl-C(=O), the C-C of
    oxalic acid, butadiene, anisole's O-aryl) are not counted: their planar conformers sit
    behind barriers that packing rarely overcomes, as the rigidity rule argues.
    """
    from rdkit import Chem

    pattern = Chem.MolFromSmarts(_CROSS_CONJUGATED_SMARTS)
    out = []
    for c, x in mol.GetSubstructMatches(pattern):
        bond = mol.GetBondBetweenAtoms(c, x)
        if bond is not None and bond.GetBondType() == Chem.BondType.SINGLE and not bond.IsInRing():
            out.append((c, x))
    return sorted(set(out))


def count_flexible_bonds(mol: Any) -> int:
    """Rotatable bonds of the rigidity rule plus the cross-conjugated links
    (:func:`cross_conjugated_bonds`): the count ``flexible="auto"`` and ``max_rotatable_bonds`` use."""
    from sim_backends.csp.rigid import count_rotatable_bonds

    return count_rotatable_bonds(mol) + len(cross_conjugated_bonds(mol))


def _zwitterion(mol: Any) -> bool:
    """A protonated base (N+ or O+ carrying H) and a deprotonated acid (O- or N- on an atom
    other than that cation) in one molecule: the amino-acid form a gas-phase relaxation
    undoes; not nitro groups, N-oxides or ylides (their charges sit on bonded atoms, no H)."""
    cations = [a for a in mol.GetAtoms() if a.GetFormalCharge() > 0 and a.GetSymbol() in ("N", "O")
               and a.GetTotalNumHs() > 0]
    anions = [a for a in mol.GetAtoms() if a.GetFormalCharge() < 0 and a.GetSymbol() in ("O", "N", "S")]
    return any(not mol.GetBondBetweenAtoms(c.GetIdx(), x.GetIdx()) for c in cations for x in anions)


#: an aliphatic amine N (every heavy neighbour an sp3 carbon; not an amide, aniline, imine or
#: aromatic N) and a carboxylic or sulfonic acid
_AMINE_SMARTS = "[NX3;+0;!$(N~[!#6;!#1]);!$(N[#6;!X4])]"
_ACID_SMARTS = "[$([CX3](=O)[OX2H1]),$([SX4](=O)(=O)[OX2H1])]"


def zwitterion_prone(mol: Any) -> bool:
    """A neutral molecule with both a basic aliphatic amine and a carboxylic (or sulfonic)
    acid, like a neutral amino acid (glycine ``NCC(=O)O``, taurine): its crystals are almost
    always of the zwitterion, which :func:`build_ensemble` refuses (:func:`_zwitterion`), so
    the neutral tautomer's landscape will not contain its known forms. Not anilines, amides
    or aromatic N (4-aminobenzoic acid, hippuric acid, nicotinic acid: neutral crystals)."""
    from rdkit import Chem

    if mol is None:
        return False
    return (mol.HasSubstructMatch(Chem.MolFromSmarts(_AMINE_SMARTS))
            and mol.HasSubstructMatch(Chem.MolFromSmarts(_ACID_SMARTS)))


ZWITTERION_PRONE_TEXT = ("{smiles} has a basic amine and an acid: it most likely crystallises as the zwitterion "
                         "(as amino acids do), which this gas-phase conformer model cannot search; this landscape "
                         "of the neutral tautomer will not contain its known forms")


def _polar_heavy_mol(molh: Any) -> Any:
    """A copy without the hydrogens bonded to carbon (what the duplicate RMSD compares)."""
    from rdkit import Chem

    rw = Chem.RWMol(molh)
    drop = [a.GetIdx() for a in molh.GetAtoms()
            if a.GetAtomicNum() == 1 and a.GetNeighbors()[0].GetAtomicNum() == 6]
    for i in sorted(drop, reverse=True):
        rw.RemoveAtom(i)
    return rw.GetMol()


def build_ensemble(
    smiles: str,
    charges: str = "resp",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    n_embed: int = 30,
    window_kjmol: float = CONFORMER_WINDOW_DEFAULT,
    rmsd_A: float = 0.25,
    max_rotatable_bonds: int = MAX_ROTATABLE_BONDS_DEFAULT,
    max_conformers: int = 12,
) -> ConformerEnsemble:
    """Conformer ensemble of a molecule (see the module docstring).

    Args:
        smiles: one neutral closed-shell molecule of H, C, N, O, F, S, Cl.
        charges: "resp", "xtb" or "none" (charges per conformer).
        cache_dir: charge cache directory.
        seed: ETKDG random seed.
        n_embed: conformers embedded before relaxation and duplicate removal.
        window_kjmol: keep conformers up to this GFN2-xTB energy above the lowest (kJ/mol).
        rmsd_A: duplicate threshold of the heavy-atom + polar-H RMSD (Angstrom).
        max_rotatable_bonds: refuse molecules with more rotatable bonds.
        max_conformers: keep at most this many (the lowest) conformers.

    Raises:
        SetupError: invalid molecule, too many rotatable bonds, bad settings, no conformer
            could be embedded or relaxed (one line).
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem, rdMolAlign

    from sim_backends.csp.charges import compute_charges
    from sim_backends.csp.forcefield import bond_graph
    from sim_backends.csp.intramolecular import IntramolecularModel
    from sim_backends.csp.rigid import RigidMolecule, gfn2_relaxed_geometry, principal_frame
    from sim_backends.molecule import validate_smiles

    for name, value, lo in (("n_embed", n_embed, 1), ("max_conformers", max_conformers, 1),
                            ("max_rotatable_bonds", max_rotatable_bonds, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            raise SetupError(f"{name} must be an integer >= {lo}, got {value!r}")
    for name, value in (("window_kjmol", window_kjmol), ("rmsd_A", rmsd_A)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
            raise SetupError(f"{name} must be a finite number >= 0, got {value!r}")
    if charges not in ("resp", "xtb", "none"):
        raise SetupError(f"unknown charge method {charges!r}; use 'resp', 'xtb' or 'none'")
    canonical = validate_smiles(smiles)
    mol = Chem.MolFromSmiles(canonical)
    n_rot = count_flexible_bonds(mol)
    if n_rot > max_rotatable_bonds:
        raise SetupError(f"{canonical}: {n_rot} rotatable bonds, above the limit max_rotatable_bonds="
                         f"{max_rotatable_bonds} (raise it to search this molecule)")
    molh = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) + 1  # (this RDKit embeds every conformer alike with seed 0)
    conf_ids = list(AllChem.EmbedMultipleConfs(molh, int(n_embed), params))
    if not conf_ids:
        raise SetupError(f"{canonical}: RDKit could not embed a 3D conformer")
    if AllChem.MMFFHasAllMoleculeParams(molh):
        AllChem.MMFFOptimizeMoleculeConfs(molh, maxIters=2000)
    else:
        AllChem.UFFOptimizeMoleculeConfs(molh, maxIters=2000)
    symbols = tuple(a.GetSymbol() for a in molh.GetAtoms())
    graph0 = bond_graph(symbols, molh.GetConformer(conf_ids[0]).GetPositions())
    intra = IntramolecularModel(symbols)
    relaxed: list[tuple[float, np.ndarray]] = []
    n_rebonded = 0
    for cid in conf_ids:
        try:
            xyz = gfn2_relaxed_geometry(symbols, molh.GetConformer(cid).GetPositions(), what=canonical)
        except SetupError:
            continue
        if bond_graph(symbols, xyz) != graph0:
            n_rebonded += 1
            continue
        energy, _ = intra.total_energy_and_grad(xyz)
        relaxed.append((energy, xyz))
    if not relaxed:
        if _zwitterion(mol) and n_rebonded:
            raise SetupError(f"{canonical}: the zwitterion is not a gas-phase minimum at GFN2-xTB (its proton "
                             f"moved back in {n_rebonded} of {len(conf_ids)} conformers); zwitterionic crystals "
                             "such as amino acids cannot be searched with this gas-phase conformer model")
        why = f" ({n_rebonded} of {len(conf_ids)} changed their bonds)" if n_rebonded else ""
        raise SetupError(f"{canonical}: no conformer survived the GFN2-xTB relaxation{why}")
    relaxed.sort(key=lambda t: t[0])
    probe = _polar_heavy_mol(molh)
    keep_idx = [a.GetIdx() for a in molh.GetAtoms()
                if not (a.GetAtomicNum() == 1 and a.GetNeighbors()[0].GetAtomicNum() == 6)]

    probe.RemoveAllConformers()

    def as_mol(xyz: np.ndarray) -> Any:
        m = Chem.Mol(probe)
        conf = Chem.Conformer(m.GetNumAtoms())
        for k, i in enumerate(keep_idx):
            conf.SetAtomPosition(k, xyz[i].tolist())
        m.AddConformer(conf, assignId=True)
        return m

    unique: list[tuple[float, np.ndarray, Any]] = []
    # a mirror-image conformer is the same conformer of an achiral (or unassigned) molecule (its
    # crystals are the mirror images, of equal energy), but the other enantiomer when the SMILES
    # assigns stereocentres
    chiral = bool(Chem.FindMolChiralCenters(mol, includeUnassigned=False, useLegacyImplementation=False))
    for energy, xyz in relaxed:
        m = as_mol(xyz)
        images = [m] if chiral else [m, as_mol(xyz * np.array([-1.0, 1.0, 1.0]))]
        if any(min(rdMolAlign.GetBestRMS(im, u[2]) for im in images) < rmsd_A for u in unique):
            continue
        unique.append((energy, xyz, m))
    e_ref = unique[0][0]
    kept = [u for u in unique if u[0] - e_ref <= window_kjmol][:max_conformers]
    torsions = TorsionSet.from_mol(molh)
    classes = list(Chem.CanonicalRankAtoms(molh, breakTies=False))
    conformers = []
    for k, (energy, xyz, _) in enumerate(kept):
        coords = principal_frame(symbols, xyz)
        if charges == "none":
            q, method, rrms = np.zeros(len(symbols)), "none", float("nan")
        else:
            fit = compute_charges(symbols, coords, charges, classes, cache_dir, cache_key=canonical)
            q, method, rrms = fit.charges_e, fit.method, fit.rrms
        rigid = RigidMolecule._build(canonical, symbols, coords, q, method, rrms)
        conformers.append(Conformer(k, rigid, energy - e_ref, tuple(float(t) for t in torsions.torsions_deg(coords))))
    return ConformerEnsemble(canonical, tuple(conformers), torsions, ENSEMBLE_LEVEL, e_ref, float(window_kjmol),
                             n_rot, len(conf_ids), len(unique))

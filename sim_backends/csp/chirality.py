"""Which space groups a CSP search may use for an enantiopure molecule.

A molecule given as one enantiomer (a SMILES whose stereocentres are assigned, and which is not
superimposable on its mirror image: ``CC1(C)[C@@H]2CC[C@@]1(C)C(=O)C2``, (1R,4R)-camphor) crystallises
from an enantiopure sample only in a Sohncke group: every symmetry operation proper (rotations,
screws, translations). A group with an inversion centre, a mirror or a glide plane (P2_1/c, P-1,
C2/c, Pbca, Pna2_1, Cc) maps the molecule onto its mirror image, so its crystals hold both
enantiomers: a racemic compound, another substance (Flack, Helv. Chim. Acta 86, 905 (2003)). Of
the searched groups P1, P2_1, C2 and P2_12_12_1 are Sohncke groups.

Contract:

* :func:`enantiopure` is True for a SMILES string (or a ``.smi``/``.txt`` file holding one) that
  assigns at least one tetrahedral stereocentre and whose canonical SMILES changes when every
  tetrahedral tag is inverted (so meso forms are not enantiopure); False for every other input:
  unassigned stereocentres name no enantiomer, and a geometry file carries no statement about the
  sample. Axial and planar chirality without tetrahedral tags are not recognised.
* :func:`stereo_policy` turns that and the user's ``racemic`` choice into the search's rule:
  ``sohncke_only`` (an enantiopure input searched as such, the default for one) or not (an achiral
  or unassigned input, or ``racemic=True``: the racemate is searched in every group, with the
  given enantiomer and its mirror image). A ``note`` says what was decided when it matters, and
  that ``racemic=True`` has no effect on an input that names no single enantiomer.
* Space-group lists are filtered or refused by :mod:`sim_backends.csp.spacegroups`
  (``sohncke_only``).

Importing this module is cheap (RDKit is imported inside the functions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SMILES_FILES = {".smi", ".txt"}
_GEOMETRY_FILES = {".xyz", ".mol", ".sdf", ".cif", ".pdb"}


def _smiles_of(smiles_or_molecule: Any) -> str | None:
    """The SMILES of a SMILES string or SMILES file; None for anything else."""
    if not isinstance(smiles_or_molecule, (str, Path)):
        return None
    text = str(smiles_or_molecule).strip()
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in _GEOMETRY_FILES:
        return None
    if suffix in _SMILES_FILES:
        from sim_backends.csp.run import smiles_from_file

        try:
            return smiles_from_file(path)
        except OSError:
            return None
    return text if len(text) < 10_000 else None


def enantiopure(smiles_or_molecule: Any) -> bool:
    """Whether the input names one enantiomer of a chiral molecule (module docstring)."""
    smiles = _smiles_of(smiles_or_molecule)
    if not smiles or "@" not in smiles:
        return False
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            return False
        centres = Chem.FindMolChiralCenters(mol, includeUnassigned=False, useLegacyImplementation=False)
        if not centres:
            return False
        mirror = Chem.Mol(mol)
        for atom in mirror.GetAtoms():
            tag = atom.GetChiralTag()
            if tag == Chem.ChiralType.CHI_TETRAHEDRAL_CW:
                atom.SetChiralTag(Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
            elif tag == Chem.ChiralType.CHI_TETRAHEDRAL_CCW:
                atom.SetChiralTag(Chem.ChiralType.CHI_TETRAHEDRAL_CW)
        return Chem.MolToSmiles(mirror) != Chem.MolToSmiles(mol)
    finally:
        RDLogger.EnableLog("rdApp.*")


@dataclass(frozen=True)
class StereoPolicy:
    """How a search treats the input's chirality (module docstring)."""

    enantiopure: bool
    racemic: bool
    sohncke_only: bool
    note: str

    def meta(self) -> dict[str, Any]:
        """The landscape's ``meta["stereo"]`` record."""
        return {"enantiopure_input": self.enantiopure, "racemic": self.racemic,
                "sohncke_only": self.sohncke_only, "note": self.note}


def stereo_policy(smiles_or_molecule: Any, racemic: bool = False) -> StereoPolicy:
    """The search rule for an input and the user's ``racemic`` choice."""
    pure = enantiopure(smiles_or_molecule)
    if pure and not racemic:
        note = ("enantiopure input (assigned stereocentres): searched only in Sohncke space groups, whose "
                "crystals hold one enantiomer; --racemic (racemic = true in a campaign's csp params) searches "
                "the racemic compound in every group")
        return StereoPolicy(True, False, True, note)
    if pure:
        note = ("racemic search of a chiral molecule: groups with inversion, mirrors or glides put the given "
                "enantiomer and its mirror image in one crystal")
        return StereoPolicy(True, True, False, note)
    note = ("--racemic (racemic = true) has no effect: the input names no single enantiomer (achiral, "
            "stereocentres unassigned, or a geometry file), so it is searched in every space group anyway"
            if racemic else "")
    return StereoPolicy(False, bool(racemic), False, note)

"""Phase data the simulated lab checks crystallisation requests against.

Melting and boiling points at 101.325 kPa (K) of common crystallisation solvents and of
small molecules the campaigns study, from the CRC Handbook of Chemistry and Physics
("Physical constants of organic compounds"; rounded to 0.1 K). Compounds are keyed by
RDKit canonical SMILES; a compound that is not listed is not checked. Where a compound
sublimes at 1 atm (acetylene, carbon dioxide) ``bp_K`` is the sublimation point and
``mp_K`` the triple point; ``bp_K`` is None where the compound decomposes first.

Rules (:func:`crystallisation_problem`), at 1 atm:

* solution methods (slow evaporation, slurry, cooling) need a listed solvent and a
  temperature inside its liquid range (mp < T < bp);
* cryocrystallisation (of the neat liquid) needs a liquid: a listed compound that
  sublimes at 1 atm (bp < mp: acetylene, carbon dioxide) is grown by sublimation instead;
* a listed compound crystallises only below the temperature at which its solid stops
  being stable, min(mp, bp): above it the compound is a liquid or a gas at 1 atm;
* the lab works between 100 and 600 K (:class:`~agent.lab.base.LabRequest`).

:func:`suggest_conditions` picks a request the rules allow, with a one-line ``note`` saying
where it comes from:

* a listed compound solid up to 308 K: slow evaporation from ethanol at 298.15 K; but a
  listed non-polar polyaromatic (only C, H, S, F atoms, >= 3 aromatic rings) solid up to
  450 K or more (anthracene, tetracene), practically insoluble in ethanol, is grown from
  the vapour (``sublimation``, i.e. physical vapour transport) at min(423.15 K, 30 K below
  min(mp, bp));
* a listed compound liquid at room temperature (thiophene, benzene) or a gas with a liquid
  range at 1 atm (ethylene, ammonia): ``cryocrystallisation``, in-situ crystallisation of
  the neat liquid (condensed gas) in a capillary, 30 K below its melting point (at least
  100 K);
* a listed compound that sublimes at 1 atm (acetylene, carbon dioxide): ``sublimation``
  (deposition from the gas onto a cold surface) 30 K below its sublimation point;
* a compound not listed (no melting point known) gets a *default assumption*, said so in
  the note: a non-polar aromatic with >= 4 aromatic rings (pentacene, coronene, BTBT) is
  taken as high-melting and insoluble, grown by physical vapour transport at 423.15 K;
  anything else slow evaporation from ethanol at 298.15 K (solubility not checked).

A campaign's ``[lab]`` table can override these (:class:`agent.lab.config.LabConfig`);
the simulated lab still refuses what the rules forbid. Temperatures in messages are
printed as given, to at most 0.01 K (:func:`agent.lab.base.format_K`).

Importing this module is cheap (stdlib only; RDKit is imported when a SMILES is
canonicalised).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Substance:
    """Phase-transition temperatures at 1 atm.

    Attributes:
        name: common name.
        mp_K: melting point (triple point for a compound that sublimes at 1 atm).
        bp_K: boiling point (sublimation point where it sublimes at 1 atm); None if
            it decomposes before boiling.
    """

    name: str
    mp_K: float
    bp_K: float | None

    @property
    def solid_below_K(self) -> float:
        """Highest temperature at which the solid is stable at 1 atm."""
        return self.mp_K if self.bp_K is None else min(self.mp_K, self.bp_K)


SOLVENTS: dict[str, Substance] = {
    s.name: s
    for s in (
        Substance("water", 273.15, 373.15),
        Substance("methanol", 175.6, 337.8),
        Substance("ethanol", 159.0, 351.4),
        Substance("1-propanol", 147.0, 370.4),
        Substance("2-propanol", 185.2, 355.4),
        Substance("1-butanol", 183.9, 390.9),
        Substance("acetone", 178.5, 329.2),
        Substance("acetonitrile", 229.3, 354.8),
        Substance("ethyl acetate", 189.6, 350.2),
        Substance("toluene", 178.2, 383.8),
        Substance("benzene", 278.7, 353.2),
        Substance("p-xylene", 286.4, 411.5),
        Substance("pentane", 143.5, 309.2),
        Substance("hexane", 178.2, 341.9),
        Substance("heptane", 182.6, 371.5),
        Substance("cyclohexane", 279.6, 353.9),
        Substance("dichloromethane", 176.0, 313.0),
        Substance("chloroform", 209.6, 334.3),
        Substance("tetrahydrofuran", 164.7, 339.0),
        Substance("diethyl ether", 156.9, 307.6),
        Substance("1,4-dioxane", 284.9, 374.5),
        Substance("dimethyl sulfoxide", 291.7, 462.2),
        Substance("n,n-dimethylformamide", 212.7, 426.2),
        Substance("nitromethane", 244.6, 374.3),
        Substance("acetic acid", 289.8, 391.1),
    )
}
SOLVENT_ALIASES: dict[str, str] = {
    "meoh": "methanol", "etoh": "ethanol", "propanol": "1-propanol", "isopropanol": "2-propanol",
    "ipa": "2-propanol", "butanol": "1-butanol", "mecn": "acetonitrile", "etoac": "ethyl acetate",
    "xylene": "p-xylene", "n-hexane": "hexane", "n-heptane": "heptane", "dcm": "dichloromethane",
    "thf": "tetrahydrofuran", "ether": "diethyl ether", "dioxane": "1,4-dioxane", "dmso": "dimethyl sulfoxide",
    "dmf": "n,n-dimethylformamide", "dimethylformamide": "n,n-dimethylformamide",
}

COMPOUNDS: dict[str, Substance] = {
    "C#C": Substance("acetylene", 192.4, 189.3),
    "O=C=O": Substance("carbon dioxide", 216.6, 194.7),
    "C": Substance("methane", 90.7, 111.7),
    "CC": Substance("ethane", 90.4, 184.6),
    "C=C": Substance("ethylene", 104.0, 169.4),
    "N": Substance("ammonia", 195.4, 239.8),
    "O": Substance("water", 273.15, 373.15),
    "C=CC=C": Substance("1,3-butadiene", 164.2, 268.7),
    "c1ccoc1": Substance("furan", 187.5, 304.6),
    "c1ccsc1": Substance("thiophene", 234.9, 357.3),
    "c1cc[nH]c1": Substance("pyrrole", 249.7, 403.0),
    "c1ccncc1": Substance("pyridine", 231.5, 388.4),
    "c1ccccc1": Substance("benzene", 278.7, 353.2),
    "c1cnccn1": Substance("pyrazine", 325.0, 388.0),
    "c1c[nH]cn1": Substance("imidazole", 362.0, 529.0),
    "Oc1ccccc1": Substance("phenol", 314.0, 454.9),
    "c1ccc2ccccc2c1": Substance("naphthalene", 353.4, 491.1),
    "c1ccc2cc3ccccc3cc2c1": Substance("anthracene", 489.0, 613.0),
    "c1cc2ccc3cccc4ccc(c1)c2c34": Substance("pyrene", 423.8, 667.0),
    "c1ccc2cc3cc4ccccc4cc3cc2c1": Substance("tetracene", 630.0, None),
    "NC=O": Substance("formamide", 275.7, 483.2),
    "O=CO": Substance("formic acid", 281.5, 374.0),
    "CC(=O)O": Substance("acetic acid", 289.8, 391.1),
    "NC(N)=O": Substance("urea", 406.0, None),
    "N#CN": Substance("cyanamide", 318.9, None),
    "O=C(O)C(=O)O": Substance("oxalic acid", 462.7, None),
    "O=C(O)CCC(=O)O": Substance("succinic acid", 457.0, None),
    "O=C(O)c1ccccc1": Substance("benzoic acid", 395.5, 522.4),
}

ROOM_TEMPERATURE_K = 298.15
ROOM_MARGIN_K = 10.0
COLD_MARGIN_K = 30.0
LAB_MIN_K = 100.0


def solvent(name: str) -> Substance | None:
    """The listed solvent called ``name`` (case-insensitive, common aliases), else None."""
    key = name.strip().lower()
    return SOLVENTS.get(SOLVENT_ALIASES.get(key, key))


def compound(smiles: str) -> Substance | None:
    """The listed compound with this SMILES (compared canonically), else None."""
    if smiles in COMPOUNDS:
        return COMPOUNDS[smiles]
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else COMPOUNDS.get(Chem.MolToSmiles(mol))


def crystallisation_problem(smiles: str, method: str, solvent_name: str | None, temperature_K: float) -> str | None:
    """Why this crystallisation cannot work at 1 atm (one line), or None if it can.

    See the module docstring for the rules; an unlisted compound is only checked
    against its solvent.
    """
    from agent.lab.base import SOLVENT_FREE_METHODS, format_K

    t = float(temperature_K)
    tk = format_K(t)
    if method not in SOLVENT_FREE_METHODS:
        sol = solvent(solvent_name or "")
        if sol is None:
            return f"unknown solvent {solvent_name!r}: the simulated lab stocks {', '.join(sorted(SOLVENTS))}"
        if t <= sol.mp_K:
            return f"{tk} K is below the melting point of {sol.name} ({format_K(sol.mp_K)} K): the solvent is frozen"
        if sol.bp_K is not None and t >= sol.bp_K:
            return f"{tk} K is above the boiling point of {sol.name} ({format_K(sol.bp_K)} K at 1 atm)"
    comp = compound(smiles)
    if comp is not None and method == "cryocrystallisation" and comp.bp_K is not None and comp.bp_K < comp.mp_K:
        return (f"{comp.name} has no liquid phase at 1 atm (sublimes at {format_K(comp.bp_K)} K): "
                "cryocrystallisation needs the neat liquid; grow it by sublimation")
    if comp is not None and t >= comp.solid_below_K:
        if comp.bp_K is not None and comp.bp_K <= t:
            verb = "sublimes" if comp.bp_K < comp.mp_K else "boils"
            state = f"a gas at {tk} K ({verb} at {format_K(comp.bp_K)} K at 1 atm)"
        else:
            state = f"a liquid at {tk} K (melts at {format_K(comp.mp_K)} K)"
        return f"{comp.name} is {state}: it cannot crystallise; crystallise below {format_K(comp.solid_below_K)} K"
    return None


#: growth temperature of physical vapour transport when nothing else is known (K)
VAPOUR_GROWTH_K = 423.15
#: a listed non-polar polyaromatic solid up to this (K) is grown from the vapour, not from ethanol
HIGH_MELTING_K = 450.0


def nonpolar_aromatic_rings(smiles: str) -> int:
    """Aromatic rings of a non-polar aromatic (atoms C, H, S, F only), else 0 (also for a bad SMILES)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdMolDescriptors

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or any(a.GetSymbol() not in ("C", "H", "S", "F") for a in mol.GetAtoms()):
        return 0
    return int(rdMolDescriptors.CalcNumAromaticRings(mol))


def suggest_conditions(smiles: str) -> dict[str, object]:
    """``method``, ``solvent``, ``temperature_K`` and ``note`` of a request the rules allow.

    See the module docstring: slow evaporation from ethanol at 298.15 K for listed solids,
    growth from the vapour for listed high-melting non-polar polyaromatics,
    cryocrystallisation of the neat liquid 30 K below the melting point for liquids and
    liquefiable gases, sublimation (deposition) 30 K below the sublimation point for
    compounds that sublime at 1 atm (at least 100 K, which may still be refused: methane
    melts at 90.7 K); for unlisted compounds a default assumption that the note states.
    """
    from agent.lab.base import format_K

    comp = compound(smiles)
    rings = nonpolar_aromatic_rings(smiles)
    where = "set [lab] conditions in the campaign config to change"
    if comp is None:
        if rings >= 4:
            return {"method": "sublimation", "solvent": None, "temperature_K": VAPOUR_GROWTH_K,
                    "note": f"default assumption: not in the substances table; a non-polar aromatic with {rings} "
                            "aromatic rings is taken as high-melting and insoluble in common solvents, grown by "
                            f"physical vapour transport at {format_K(VAPOUR_GROWTH_K)} K ({where})"}
        return {"method": "slow_evaporation", "solvent": "ethanol", "temperature_K": ROOM_TEMPERATURE_K,
                "note": "default assumption: not in the substances table (melting point and solubility "
                        f"unknown): slow evaporation from ethanol at {format_K(ROOM_TEMPERATURE_K)} K ({where})"}
    solid = comp.solid_below_K
    if solid > ROOM_TEMPERATURE_K + ROOM_MARGIN_K:
        if rings >= 3 and solid >= HIGH_MELTING_K:
            t = round(min(VAPOUR_GROWTH_K, solid - COLD_MARGIN_K), 2)
            return {"method": "sublimation", "solvent": None, "temperature_K": t,
                    "note": f"{comp.name} (solid to {format_K(solid)} K) is a non-polar polyaromatic, poorly "
                            f"soluble in ethanol: grown from the vapour (physical vapour transport) at {format_K(t)} K"}
        return {"method": "slow_evaporation", "solvent": "ethanol", "temperature_K": ROOM_TEMPERATURE_K,
                "note": f"{comp.name} is solid to {format_K(solid)} K: slow evaporation from ethanol at room temperature"}
    cold = max(LAB_MIN_K, round(solid - COLD_MARGIN_K, 2))
    if comp.bp_K is not None and comp.bp_K < comp.mp_K:
        return {"method": "sublimation", "solvent": None, "temperature_K": cold,
                "note": f"{comp.name} sublimes at {format_K(comp.bp_K)} K at 1 atm: deposited from the gas onto "
                        f"a surface held at {format_K(cold)} K"}
    return {"method": "cryocrystallisation", "solvent": None, "temperature_K": cold,
            "note": f"{comp.name} melts at {format_K(comp.mp_K)} K: in-situ cryocrystallisation of the neat "
                    f"liquid (e.g. in a capillary) at {format_K(cold)} K"}

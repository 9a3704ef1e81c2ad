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
* a listed compound crystallises only below the temperature at which its solid stops
  being stable, min(mp, bp): above it the compound is a liquid or a gas at 1 atm;
* the lab works between 100 and 600 K (:class:`~agent.lab.base.LabRequest`).

:func:`suggest_conditions` picks a request the rules allow: room-temperature slow
evaporation from ethanol for compounds that are solid up to 308 K (or not listed), else
an in-situ cold crystallisation, modelled as sublimation onto a surface held 30 K
below min(mp, bp) (at least 100 K), as done for liquids and gases such as benzene or
acetylene.

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
    t = float(temperature_K)
    if method != "sublimation":
        sol = solvent(solvent_name or "")
        if sol is None:
            return f"unknown solvent {solvent_name!r}: the simulated lab stocks {', '.join(sorted(SOLVENTS))}"
        if t <= sol.mp_K:
            return f"{t:.2f} K is below the melting point of {sol.name} ({sol.mp_K:.1f} K): the solvent is frozen"
        if sol.bp_K is not None and t >= sol.bp_K:
            return f"{t:.2f} K is above the boiling point of {sol.name} ({sol.bp_K:.1f} K at 1 atm)"
    comp = compound(smiles)
    if comp is not None and t >= comp.solid_below_K:
        if comp.bp_K is not None and comp.bp_K <= t:
            state = f"a gas at {t:.2f} K ({'sublimes' if comp.bp_K < comp.mp_K else 'boils'} at {comp.bp_K:.1f} K at 1 atm)"
        else:
            state = f"a liquid at {t:.2f} K (melts at {comp.mp_K:.1f} K)"
        return f"{comp.name} is {state}: it cannot crystallise; crystallise below {comp.solid_below_K:.1f} K"
    return None


def suggest_conditions(smiles: str) -> dict[str, object]:
    """``method``, ``solvent`` and ``temperature_K`` of a request the rules allow.

    Compounds solid up to 10 K above room temperature (or not listed): slow
    evaporation from ethanol at 298.15 K. Others: in-situ cold crystallisation (sublimation) 30 K below
    min(mp, bp), at least 100 K (which may still be refused: methane melts at 90.7 K).
    """
    comp = compound(smiles)
    if comp is None or comp.solid_below_K > ROOM_TEMPERATURE_K + ROOM_MARGIN_K:
        return {"method": "slow_evaporation", "solvent": "ethanol", "temperature_K": ROOM_TEMPERATURE_K}
    cold = max(LAB_MIN_K, round(comp.solid_below_K - COLD_MARGIN_K, 1))
    return {"method": "sublimation", "solvent": None, "temperature_K": cold}

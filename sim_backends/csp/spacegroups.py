"""Space groups searched by the CSP engine, with one molecule in a general position (Z' = 1).

The symmetry operations (rotation matrix and translation acting on fractional
coordinates, centring translations included) come from the spglib database in the
standard setting of the International Tables (first Hall setting of each number:
unique axis b, cell choice 1 for monoclinic groups). The ten groups below cover
roughly 90 % of organic molecular crystals in the CSD (Baur & Kassner, Acta Cryst.
B48, 356, 1992).

Each group also declares its crystal system, which fixes the cell-parameter
constraints used by trial generation and minimisation:

=============  ========================  =================
system          free parameters           fixed
=============  ========================  =================
triclinic       a, b, c, alpha, beta, gamma
monoclinic      a, b, c, beta              alpha = gamma = 90
orthorhombic    a, b, c                    alpha = beta = gamma = 90
=============  ========================  =================

Importing this module is cheap (spglib is imported inside :func:`get_space_group`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: our name -> (International Tables number, spglib Hall number of the standard setting)
_GROUPS: dict[str, tuple[int, int]] = {
    "P1": (1, 1),
    "P-1": (2, 2),
    "P2_1": (4, 6),
    "C2": (5, 9),
    "Cc": (9, 39),
    "P2_1/c": (14, 81),
    "C2/c": (15, 90),
    "P2_12_12_1": (19, 115),
    "Pna2_1": (33, 164),
    "Pbca": (61, 290),
}

#: other settings of these groups (cell choices and axis labels of the International Tables),
#: searched as the same group in its standard setting: a crystal reported in P2_1/n is a
#: P2_1/c crystal in another cell
_SETTINGS: dict[str, str] = {
    "P2_1/n": "P2_1/c", "P2_1/a": "P2_1/c",
    "A2/n": "C2/c", "I2/a": "C2/c",
    "An": "Cc", "Ia": "Cc",
    "A2": "C2", "I2": "C2",
    "Pbn2_1": "Pna2_1", "Pn2_1a": "Pna2_1",
    "Pcab": "Pbca",
}

#: a frequency-ordered default list for searches (most common organic groups first)
DEFAULT_SPACE_GROUPS: tuple[str, ...] = (
    "P2_1/c", "P-1", "P2_12_12_1", "P2_1", "C2/c", "Pbca", "Pna2_1", "Cc", "C2", "P1",
)

#: indices into (a, b, c, alpha, beta, gamma) that are free, per crystal system
FREE_CELL_PARAMETERS: dict[str, tuple[int, ...]] = {
    "triclinic": (0, 1, 2, 3, 4, 5),
    "monoclinic": (0, 1, 2, 4),
    "orthorhombic": (0, 1, 2),
}


@dataclass(frozen=True, eq=False)
class SpaceGroup:
    """A space group in its standard setting.

    Attributes:
        symbol: our short symbol, e.g. ``"P2_1/c"`` (also accepted by pymatgen).
        number: International Tables number.
        hall_number: spglib Hall number of the setting used.
        rotations: (n_ops, 3, 3) integer matrices acting on fractional column vectors.
        translations: (n_ops, 3) fractional translations, centring included.
        crystal_system: "triclinic", "monoclinic" or "orthorhombic".
    """

    symbol: str
    number: int
    hall_number: int
    rotations: np.ndarray
    translations: np.ndarray
    crystal_system: str

    @property
    def z(self) -> int:
        """Molecules per conventional cell for one molecule in a general position."""
        return int(self.rotations.shape[0])

    @property
    def sohncke(self) -> bool:
        """Every operation proper (det +1): a group an enantiopure crystal can have
        (:mod:`sim_backends.csp.chirality`)."""
        return bool(np.all(np.linalg.det(self.rotations) > 0))

    @property
    def free_cell_parameters(self) -> tuple[int, ...]:
        """Indices of the free entries of (a, b, c, alpha, beta, gamma)."""
        return FREE_CELL_PARAMETERS[self.crystal_system]

    def apply(self, frac: np.ndarray) -> np.ndarray:
        """Images of fractional positions under every operation.

        Args:
            frac: (..., 3) fractional coordinates.

        Returns:
            (n_ops, ..., 3) images, not wrapped into the cell.
        """
        frac = np.asarray(frac, dtype=float)
        return np.einsum("oij,...j->o...i", self.rotations, frac) + self.translations.reshape(
            (self.z,) + (1,) * (frac.ndim - 1) + (3,)
        )


def _crystal_system(number: int) -> str:
    if number <= 2:
        return "triclinic"
    if number <= 15:
        return "monoclinic"
    if number <= 74:
        return "orthorhombic"
    raise ValueError(f"space group {number} is not supported (only triclinic to orthorhombic)")


def canonical_symbol(symbol: str) -> str:
    """Map user spellings (``P21/c``, ``p2_1/c``, ``14``) and other settings of a supported
    group (``P2_1/n``, ``I2/a``: :data:`_SETTINGS`) to our symbol.

    Raises:
        ValueError: unknown or unsupported space group (one line; a number 1-230 is named by
            its symbol, e.g. "unsupported space group 62 (Pnma); supported: ...").
    """
    s = str(symbol).strip()
    if s.isdigit():
        for name, (num, _) in _GROUPS.items():
            if num == int(s):
                return name
        if 1 <= int(s) <= 230:  # name it: the user may know the group by its symbol only
            raise ValueError(f"unsupported space group {int(s)} ({_itc_symbols()[int(s)]}); "
                             f"supported: {supported_groups_text()}")
        raise ValueError(f"unsupported space group {symbol!r} (space-group numbers run from 1 to 230); "
                         f"supported: {supported_groups_text()}")
    norm = _normalised(s)
    for name in _GROUPS:
        if _normalised(name) == norm:
            return name
    if (alias := _setting_alias(s)) is not None:
        return _SETTINGS[alias]
    raise ValueError(
        f"unsupported space group {symbol!r}; supported: {supported_groups_text()}"
    )


def _setting_alias(symbol: str) -> str | None:
    """The :data:`_SETTINGS` key ``symbol`` spells (``p21/n`` -> ``P2_1/n``), else None."""
    norm = _normalised(symbol)
    return next((alias for alias in _SETTINGS if _normalised(alias) == norm), None)


def _normalised(symbol: str) -> str:
    """A symbol as spellings are compared: no underscores or spaces, lower case (P2_1/c = p21/c)."""
    return str(symbol).strip().replace("_", "").replace(" ", "").lower()


def setting_notes(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """One line per other setting among the groups of ``spec`` (as :func:`parse_space_groups`
    takes it), saying which standard-setting group is searched instead, e.g. ``"P2_1/n is
    searched as P2_1/c (No. 14, standard setting); the CIFs are in P2_1/c"``."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    aliases = dict.fromkeys(a for a in map(_setting_alias, items) if a is not None)
    return [f"{a} is searched as {_SETTINGS[a]} (No. {_GROUPS[_SETTINGS[a]][0]}, standard setting); "
            f"the CIFs are in {_SETTINGS[a]}" for a in aliases]


@lru_cache(maxsize=1)
def _itc_symbols() -> dict[int, str]:
    """International Tables number -> short symbol of its standard setting (spglib's database)."""
    import spglib

    symbols: dict[int, str] = {}
    for hall in range(1, 531):
        t = spglib.get_spacegroup_type(hall)
        symbols.setdefault(int(t.number), t.international_short)
    return symbols


def supported_groups_text() -> str:
    """``"P1 (1), P-1 (2), ..."``: the searchable groups with their numbers, and a note on
    other settings."""
    return (", ".join(f"{name} ({num})" for name, (num, _) in _GROUPS.items())
            + "; other settings such as P2_1/n or I2/a are searched in the standard one")


@lru_cache(maxsize=None)
def get_space_group(symbol: str) -> SpaceGroup:
    """The :class:`SpaceGroup` for ``symbol`` (see :func:`canonical_symbol`)."""
    import spglib

    name = canonical_symbol(symbol)
    number, hall = _GROUPS[name]
    data = spglib.get_symmetry_from_database(hall)
    rot = np.asarray(data["rotations"], dtype=float)
    trans = np.mod(np.asarray(data["translations"], dtype=float), 1.0)
    rot.setflags(write=False)
    trans.setflags(write=False)
    return SpaceGroup(name, number, hall, rot, trans, _crystal_system(number))


def parse_space_groups(spec: str | list[str] | tuple[str, ...] | None,
                       sohncke_only: bool = False) -> list[SpaceGroup]:
    """Parse ``"P2_1/c,P-1"`` or a list of symbols; None gives :data:`DEFAULT_SPACE_GROUPS`
    (with ``sohncke_only``, the Sohncke groups among them: an enantiopure molecule).

    Raises:
        ValueError: empty list or unknown symbol (one line); with ``sohncke_only``, a given
            group that is not a Sohncke group.
    """
    if spec is None:
        names: list[str] = [g for g in DEFAULT_SPACE_GROUPS if not sohncke_only or get_space_group(g).sohncke]
    elif isinstance(spec, str):
        names = [s for s in spec.split(",") if s.strip()]
    else:
        names = list(spec)
    if not names:
        raise ValueError("no space groups given")
    out: list[SpaceGroup] = []
    for n in names:
        sg = get_space_group(canonical_symbol(n))
        if sohncke_only and not sg.sohncke:
            ok = ", ".join(g for g in _GROUPS if get_space_group(g).sohncke)
            raise ValueError(f"space group {sg.symbol} has inversion, mirror or glide symmetry: its crystals hold "
                             f"both enantiomers of this enantiopure molecule; use Sohncke groups ({ok}) or "
                             f"racemic (--racemic)")
        if sg.symbol not in {o.symbol for o in out}:
            out.append(sg)
    return out


#: space groups a Z' = 2 search uses when none are given (the four most common Z' = 2
#: groups of organic crystals; Steed, CrystEngComm 5, 169, 2003)
ZPRIME2_SPACE_GROUPS: tuple[str, ...] = ("P2_1/c", "P-1", "P2_12_12_1", "P2_1")
#: largest Z' a search accepts
MAX_Z_PRIME = 2
_ZPRIME_TAG = " Z'="


def parse_z_prime(spec: int | str | list[int] | tuple[int, ...] | None) -> list[int]:
    """``2``, ``"1,2"`` or ``[1, 2]`` -> sorted distinct Z' values (None: ``[1]``).

    Raises:
        ValueError: empty, not an integer, or outside 1..:data:`MAX_Z_PRIME` (one line).
    """
    if spec is None:
        return [1]
    items = spec.split(",") if isinstance(spec, str) else ([spec] if isinstance(spec, (int, np.integer)) else spec)
    out: set[int] = set()
    for item in items:
        text = str(item).strip()
        if isinstance(item, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_Z_PRIME:
            raise ValueError(f"z_prime must be integers from 1 to {MAX_Z_PRIME} (e.g. 1,2), got {spec!r}")
        out.add(int(text))
    if not out:
        raise ValueError(f"z_prime must be integers from 1 to {MAX_Z_PRIME} (e.g. 1,2), got {spec!r}")
    return sorted(out)


def search_label(symbol: str, z_prime: int) -> str:
    """The name of one search: the space-group symbol for Z' = 1, ``"P-1 Z'=2"`` otherwise."""
    return symbol if z_prime == 1 else f"{symbol}{_ZPRIME_TAG}{z_prime}"


def parse_search_label(label: str) -> tuple[str, int]:
    """(space-group symbol, Z') of a :func:`search_label`."""
    symbol, _, zp = str(label).partition(_ZPRIME_TAG)
    return symbol, int(zp) if zp else 1


def search_labels(space_groups: str | list[str] | tuple[str, ...] | None,
                  z_prime: int | str | list[int] | tuple[int, ...] | None = 1,
                  sohncke_only: bool = False) -> list[str]:
    """The searches of a run: every group at Z' = 1, and at Z' = 2 the given groups (or,
    when none are given, :data:`ZPRIME2_SPACE_GROUPS`); with ``sohncke_only`` only Sohncke
    groups (:func:`parse_space_groups`)."""
    zps = parse_z_prime(z_prime)
    groups = [g.symbol for g in parse_space_groups(space_groups, sohncke_only)]
    zp2 = [g for g in ZPRIME2_SPACE_GROUPS if not sohncke_only or get_space_group(g).sohncke]
    labels = []
    for zp in zps:
        for g in groups if zp == 1 or space_groups is not None else zp2:
            labels.append(search_label(g, zp))
    return labels

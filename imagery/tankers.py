"""Tanker evidence, the tanker-call rule and the cargo estimate in barrels.

Every figure below is a named, configurable constant (`TankerConfig`) with where it comes from;
where a figure is an engineering estimate rather than a published value, the comment says so.
The README ("Tanker calls and barrels") states the rule and works one example by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

# --- the constants -----------------------------------------------------------------------------

# One US oil barrel is 42 US gallons of 3.785411784 L (NIST Handbook 44, appendix C), that is
# 0.158987294928 m3; hence 6.28981 barrels per cubic metre.
BARRELS_PER_M3 = 1.0 / 0.158987294928

# UN Security Council resolution 2397 (2017), paragraph 5: the DPRK may import at most 500,000
# barrels of refined petroleum products in each twelve-month period from 1 January 2018.
UN_ANNUAL_CAP_BARRELS = 500_000

VESSEL_TYPES = ("tanker", "cargo", "other", "unknown")  # the analyst's choices


@dataclass(frozen=True)
class TankerConfig:
    """The tanker band and the length -> barrels chain. Change any field to re-run a report
    with other assumptions (`berthwatch report` prints and the page states the ones used)."""

    # Length band of the small product tankers the DPRK is reported to use. The UN Panel of
    # Experts' reports (S/2018/171, S/2019/171, S/2020/151 and later) list DPRK-flagged and
    # foreign tankers delivering refined products in ship-to-ship transfers and at Nampo /
    # Chongjin; those vessels are mostly small coastal product tankers of roughly 60-110 m
    # overall (about 1,000-6,000 dwt). The band is a rounded reading of those listings, not a
    # statistic computed from a register: treat its edges as approximate.
    band_min_m: float = 60.0
    band_max_m: float = 110.0
    # Length -> deadweight: geometric similarity (length, beam and draught scale together, so
    # displacement and deadweight go as length cubed): dwt = (length / k)^3. k = 5.7 m per
    # tonne^(1/3) reproduces typical coastal product tankers: about 1,000 dwt at 57 m,
    # 3,000 dwt at 82 m, 5,000 dwt at 98 m (length overall). It is an engineering estimate
    # fitted by hand to such vessels, NOT a published regression; Kristensen (2012),
    # "Determination of regression formulas for main dimensions of tankers and bulk
    # carriers based on IHS Fairplay data" (DTU, project 2010-56, WP2 report 02), fits small
    # tankers (< 10,000 dwt) from a register and is where to check or replace it.
    length_per_cube_root_dwt: float = 5.7
    # Share of the deadweight carried as cargo. The United States' 2018 submission to the UN
    # 1718 Committee estimated deliveries with tankers loaded to 90 % of capacity (and, as a
    # floor, to one third). 0.9 also leaves ~10 % of deadweight for bunkers, stores and water.
    # Uncertain: a tanker may call part-loaded; set 0.33 for the submission's floor case.
    load_factor: float = 0.9
    # Density of the cargo in t/m3. Diesel (EN 590: 0.820-0.845 at 15 C) is the main product
    # reported; 0.84 is its middle. Gasoline (EN 228: 0.720-0.775) would give ~12 % more
    # barrels per tonne. Uncertain: the product is not seen from orbit.
    density_t_per_m3: float = 0.84
    # The detector's length error, from weights/MODEL_CARD.md: on ports it never saw
    # (leave-ports-out over the 11 shared sen2ships ports, 156 vessels found) the median
    # absolute error of length_m against the labelled outlines is 28.3 m (median error -13.5 m:
    # it tends to underestimate). low / high barrels use the length minus / plus this error,
    # so the range is about a 50 % interval of the length error alone (load factor and
    # density uncertainty come on top). Mostly measured on ships longer than these tankers.
    length_error_m: float = 28.3
    min_length_m: float = 10.0  # a floor for the low case: no hull is shorter than this


DEFAULT_CONFIG = TankerConfig()
LONGEST_HULL_M = 10_000.0  # `config_with` refuses settings whose barrels overflow below this


def config_with(settings: list[str], base: TankerConfig = DEFAULT_CONFIG) -> TankerConfig:
    """`["load_factor=0.33", ...]` (`berthwatch report --set`) applied to `base`; a
    ValueError names the setting that is wrong."""
    names = [f.name for f in fields(TankerConfig)]
    changes: dict[str, float] = {}
    for item in settings:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise ValueError(f"--set {item!r}: expected NAME=NUMBER with NAME one of "
                             f"{', '.join(names)}")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--set {item!r}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"--set {item!r}: must be a finite number")
        if value < 0 or (value == 0 and name != "length_error_m"):
            raise ValueError(f"--set {item!r}: must be positive")
        changes[name] = value
    config = replace(base, **changes)
    if config.band_min_m > config.band_max_m:
        raise ValueError(f"--set: band_min_m {config.band_min_m:g} is above band_max_m "
                         f"{config.band_max_m:g}")
    try:  # finite barrels for any hull up to LONGEST_HULL_M, or the settings are refused
        check = barrels_range(LONGEST_HULL_M, config)
        finite = all(math.isfinite(v) for v in (check.low, check.central, check.high))
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"--set {' '.join(settings)}: gives no finite barrels for a "
                         f"{LONGEST_HULL_M:g} m hull")
    return config


# --- barrels -------------------------------------------------------------------------------------


def deadweight_t(length_m: float, config: TankerConfig = DEFAULT_CONFIG) -> float:
    """Deadweight in tonnes of a small product tanker of this length."""
    return (max(length_m, 0.0) / config.length_per_cube_root_dwt) ** 3


def barrels_for_length(length_m: float, config: TankerConfig = DEFAULT_CONFIG) -> float:
    """Barrels of product a tanker of this length carries at the configured load factor."""
    cargo_t = deadweight_t(length_m, config) * config.load_factor
    return cargo_t / config.density_t_per_m3 * BARRELS_PER_M3


@dataclass(frozen=True)
class BarrelRange:
    low: float
    central: float
    high: float


def barrels_range(length_m: float, config: TankerConfig = DEFAULT_CONFIG) -> BarrelRange:
    """Low / central / high barrels of one tanker call from its estimated length, the
    low and high ends at the length minus / plus the detector's measured length error."""
    low_len = max(config.min_length_m, length_m - config.length_error_m)
    return BarrelRange(barrels_for_length(low_len, config), barrels_for_length(length_m, config),
                       barrels_for_length(length_m + config.length_error_m, config))


# --- evidence and the rule -----------------------------------------------------------------------


@dataclass(frozen=True)
class TankerEvidence:
    """What points to (or away from) a tanker, each piece kept apart for the analyst."""

    at_oil_berth: bool
    length_m: float | None  # the detector's estimate (median over the call's scenes)
    length_in_band: bool | None  # None: no length estimate
    ais_ship_type: int | None  # from the matched AIS vessel; None: unmatched or not reported
    analyst_type: str | None  # the analyst's latest vessel-type choice; None: not given

    @property
    def ais_tanker(self) -> bool | None:
        if self.ais_ship_type is None:
            return None
        return 80 <= self.ais_ship_type <= 89  # ITU-R M.1371 ship types 80-89: tankers

    def describe(self) -> str:
        parts = ["oil berth" if self.at_oil_berth else "not an oil berth"]
        if self.length_m is not None:
            parts.append(f"length {self.length_m:.0f} m "
                         f"{'in' if self.length_in_band else 'outside'} band")
        if self.ais_ship_type is not None:
            parts.append(f"AIS type {self.ais_ship_type}")
        if self.analyst_type:
            parts.append(f"analyst: {self.analyst_type}")
        return "; ".join(parts)


def gather_evidence(*, at_oil_berth: bool, length_m: float | None, ais_ship_type: int | None,
                    analyst_type: str | None,
                    config: TankerConfig = DEFAULT_CONFIG) -> TankerEvidence:
    in_band = None if length_m is None else config.band_min_m <= length_m <= config.band_max_m
    analyst = analyst_type if analyst_type in VESSEL_TYPES and analyst_type != "unknown" else None
    return TankerEvidence(at_oil_berth, length_m, in_band, ais_ship_type or None, analyst)


def tanker_decision(evidence: TankerEvidence) -> tuple[bool, str]:
    """(is a tanker call, the rule that decided). In order, the first that applies:
    1. the analyst's vessel type (tanker: yes; cargo or other: no);
    2. the matched AIS vessel's ship type (80-89: yes; any other reported type: no);
    3. otherwise (no AIS: an undeclared call) yes when it lies at an oil berth AND its
       estimated length is inside the tanker band."""
    if evidence.analyst_type == "tanker":
        return True, "analyst"
    if evidence.analyst_type in ("cargo", "other"):
        return False, "analyst"
    if evidence.ais_tanker is not None:
        return evidence.ais_tanker, "ais-type"
    return bool(evidence.at_oil_berth and evidence.length_in_band), "oil-berth+length"

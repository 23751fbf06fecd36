"""The pre-work checklist: pure checks a job must pass before it may take a lease.

Four items, each a small function of plain inputs (no Ray, no MLflow, the clock passed in):

- ``data_fresh`` — the newest slice is younger than ``checklist.max_data_age_s``;
- ``schema`` — every new slice has the columns the model trains on, with the reference's types, and
  the champion (if any) expects as many features;
- ``drift`` — per new slice and feature, the population stability index (PSI, on the reference's
  quantile bins) and the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) against the
  reference data stay within bounds;
- ``harness`` — the validation harness is ready: the holdout is readable and the champion loads.

Each check returns a :class:`CheckResult` with a one-line detail and the numbers behind it; the
job driver (:mod:`runtime.governance.job`) gathers the inputs, runs the enabled items and records them.

>>> rng = np.random.default_rng(0)
>>> round(psi(rng.normal(0, 1, 20_000), rng.normal(1, 1, 20_000)), 1)  # a one-sigma mean shift
0.9
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

_EPS = 1e-4  # floor of a bin's share, so an empty bin gives a large but finite PSI term


@dataclass(frozen=True)
class CheckResult:
    item: str
    passed: bool
    detail: str  # one line a human reads in the summary and the post-mortem
    numbers: dict[str, float] = field(default_factory=dict)  # logged as MLflow metrics checklist.<item>.<name>


@dataclass(frozen=True)
class ChecklistOutcome:
    results: tuple[CheckResult, ...]
    drift: tuple[dict, ...] = ()  # one row per (slice, feature): psi, ks_stat, ks_pvalue, within

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failed_items": [r.item for r in self.failed],
                "items": [asdict(r) for r in self.results], "drift": list(self.drift)}


# --- drift statistics ---------------------------------------------------------------------------

def psi(reference: np.ndarray, sample: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``sample`` against ``reference``, on the reference's quantile bins.

    ``sum((a - e) * ln(a / e))`` over bins, ``e``/``a`` the reference's/sample's share of each bin.
    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 a shift worth acting on.
    """
    reference, sample = _finite(reference), _finite(sample)
    if len(reference) == 0 or len(sample) == 0:
        return math.nan
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate(([-np.inf], inner, [np.inf]))
    e = np.maximum(np.histogram(reference, edges)[0] / len(reference), _EPS)
    a = np.maximum(np.histogram(sample, edges)[0] / len(sample), _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def ks(reference: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    """``(statistic, p-value)`` of the two-sample Kolmogorov-Smirnov test."""
    reference, sample = _finite(reference), _finite(sample)
    if len(reference) == 0 or len(sample) == 0:
        return math.nan, math.nan
    # The exact p-value costs ~2 ms per feature and slice at these sizes; from 1,000 rows a side the
    # asymptotic one is as good for a drift bound (SciPy's "auto" keeps exact up to 10,000).
    res = stats.ks_2samp(reference, sample, method="asymp" if min(len(reference), len(sample)) >= 1000 else "auto")
    return float(res.statistic), float(res.pvalue)


def _finite(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    return arr[np.isfinite(arr)]


def evenly_spaced(n: int, cap: int | None) -> np.ndarray:
    """Indices of at most ``cap`` rows spread evenly over ``n`` (all of them when ``cap`` is unset or
    not smaller): a slice sorted by time is sampled from its start to its end.

    >>> evenly_spaced(10, 4).tolist()
    [0, 3, 6, 9]
    >>> len(evenly_spaced(5, None))
    5
    """
    if cap is None or n <= cap:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, cap).round().astype(np.int64))


def drift_rows(reference: dict[str, np.ndarray], slice_name: str, sample: dict[str, np.ndarray], cfg) -> list[dict]:
    """PSI and KS of every feature of one slice; ``within`` says whether the ``cfg`` bounds hold."""
    rows = []
    for feature, ref_values in reference.items():
        p = psi(ref_values, sample[feature], cfg.bins)
        stat, pvalue = ks(ref_values, sample[feature])
        within = _le(p, cfg.psi_max) and _le(stat, cfg.ks_stat_max) and (
            cfg.ks_pvalue_min is None or (not math.isnan(pvalue) and pvalue >= cfg.ks_pvalue_min))
        rows.append({"slice": slice_name, "feature": feature, "psi": round(p, 6), "ks_stat": round(stat, 6),
                     "ks_pvalue": pvalue, "rows": int(len(sample[feature])), "within": within})
    return rows


def _le(value: float, bound: float | None) -> bool:
    return bound is None or (not math.isnan(value) and value <= bound)


# --- the four items -----------------------------------------------------------------------------

def check_freshness(newest_mtime_s: float, now_s: float, max_age_s: float | None) -> CheckResult:
    age = max(0.0, now_s - newest_mtime_s)
    if max_age_s is None:
        return CheckResult("data_fresh", True, f"newest slice is {age:.0f} s old (no bound set)", {"age_s": age})
    ok = age <= max_age_s
    verdict = "within" if ok else "older than"
    return CheckResult("data_fresh", ok, f"newest slice is {age:.0f} s old, {verdict} the bound of {max_age_s:g} s",
                       {"age_s": age, "max_age_s": max_age_s})


def check_schema(expected: dict[str, str], slices: dict[str, dict[str, str]], *, exact: bool,
                 model_features: int | None = None, n_features: int | None = None) -> CheckResult:
    """``expected`` and each slice's schema map column -> type kind (see :func:`type_kind`).

    ``exact``: the slices must not carry other columns either (they would become features).
    """
    problems = []
    for name, cols in slices.items():
        missing = [c for c in expected if c not in cols]
        changed = [f"{c} {cols[c]}!={expected[c]}" for c in expected if c in cols and cols[c] != expected[c]]
        extra = [c for c in cols if c not in expected] if exact else []
        for label, items in (("missing", missing), ("type changed", changed), ("unexpected", extra)):
            if items:
                problems.append(f"{name}: {label} {', '.join(items)}")
    if model_features is not None and n_features is not None and model_features != n_features:
        problems.append(f"champion expects {model_features} features, the data has {n_features}")
    numbers = {"slices_checked": float(len(slices)), "mismatches": float(len(problems))}
    if problems:
        return CheckResult("schema", False, "; ".join(problems)[:400], numbers)
    return CheckResult("schema", True, f"{len(slices)} new slice(s) match the training schema ({len(expected)} columns)", numbers)


def check_drift(rows: list[dict], cfg) -> CheckResult:
    if not rows:
        return CheckResult("drift", True, "no new slices to compare", {})
    worst_psi = max(rows, key=lambda r: -1 if math.isnan(r["psi"]) else r["psi"])
    worst_ks = max(rows, key=lambda r: -1 if math.isnan(r["ks_stat"]) else r["ks_stat"])
    min_p = min(r["ks_pvalue"] for r in rows)
    numbers = {"psi_max_seen": worst_psi["psi"], "ks_stat_max_seen": worst_ks["ks_stat"], "ks_pvalue_min_seen": min_p,
               "pairs_drifted": float(sum(not r["within"] for r in rows))}
    bad = [r for r in rows if not r["within"]]
    if not bad:
        return CheckResult("drift", True, f"{len(rows)} slice-feature pairs within bounds "
                                          f"(max PSI {worst_psi['psi']:.3f}, max KS {worst_ks['ks_stat']:.3f})", numbers)
    b = max(bad, key=lambda r: r["psi"])
    bounds = f"psi_max {cfg.psi_max:g}" + (f", ks_stat_max {cfg.ks_stat_max:g}" if cfg.ks_stat_max is not None else "") + (
        f", ks_pvalue_min {cfg.ks_pvalue_min:g}" if cfg.ks_pvalue_min is not None else "")
    return CheckResult("drift", False, f"{len(bad)} slice-feature pair(s) drifted; worst {b['slice']}/{b['feature']}: "
                                       f"PSI {b['psi']:.3f}, KS {b['ks_stat']:.3f} (p={b['ks_pvalue']:.2g}) against {bounds}",
                       numbers)


def check_harness(holdout_rows: int | None, holdout_error: str | None, champion_version: int | None,
                  champion_error: str | None) -> CheckResult:
    numbers = {"holdout_rows": float(holdout_rows or 0)}
    if champion_version is not None:
        numbers["champion_version"] = float(champion_version)
    if holdout_error:
        return CheckResult("harness", False, f"holdout not readable: {holdout_error}"[:400], numbers)
    if not holdout_rows:
        return CheckResult("harness", False, "holdout has no rows", numbers)
    if champion_error:
        return CheckResult("harness", False, f"champion not loadable: {champion_error}"[:400], numbers)
    champ = f"champion v{champion_version} loads" if champion_version is not None else "no champion yet (this version becomes it)"
    return CheckResult("harness", True, f"holdout readable ({holdout_rows} rows); {champ}", numbers)


def type_kind(arrow_type) -> str:
    """A coarse kind of a pyarrow type: ints and floats are both ``numeric`` (training casts to float)."""
    import pyarrow.types as pat

    if pat.is_integer(arrow_type) or pat.is_floating(arrow_type) or pat.is_boolean(arrow_type) or pat.is_decimal(arrow_type):
        return "numeric"
    if pat.is_string(arrow_type) or pat.is_large_string(arrow_type):
        return "string"
    return str(arrow_type)

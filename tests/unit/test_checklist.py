"""The pre-work checklist's pure checks: drift numbers on synthetic data with a known shift, and outcomes."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import norm

from runtime.governance.checklist import (ChecklistOutcome, check_drift, check_freshness, check_harness, check_schema, drift_rows,
                               ks, psi, type_kind)
from runtime.spec.governance import ChecklistSpec


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_psi_is_near_zero_for_the_same_distribution_and_grows_with_the_shift(rng):
    ref = rng.normal(0, 1, 50_000)
    same = psi(ref, rng.normal(0, 1, 50_000))
    assert same < 0.01
    shifts = [psi(ref, rng.normal(d, 1, 50_000)) for d in (0.25, 0.5, 1.0)]
    assert shifts == sorted(shifts)
    # For a mean shift d of a unit normal the PSI (a symmetrised KL divergence) tends to d**2;
    # ten quantile bins capture most of it.
    for d, value in zip((0.25, 0.5, 1.0), shifts):
        assert 0.75 * d**2 < value < 1.1 * d**2


def test_ks_statistic_matches_the_theory_for_a_mean_shift(rng):
    ref, moved = rng.normal(0, 1, 40_000), rng.normal(1.0, 1, 40_000)
    stat, pvalue = ks(ref, moved)
    assert stat == pytest.approx(2 * norm.cdf(0.5) - 1, abs=0.015)  # sup |F0 - F1| of N(0,1) vs N(1,1)
    assert pvalue < 1e-12
    stat_same, p_same = ks(ref, rng.normal(0, 1, 40_000))
    assert stat_same < 0.02 and p_same > 1e-3


def test_psi_and_ks_ignore_non_finite_values_and_empty_inputs_give_nan(rng):
    ref = rng.normal(0, 1, 5000)
    noisy = np.concatenate([rng.normal(0, 1, 5000), [np.nan, np.inf]])
    assert psi(ref, noisy) < 0.02
    assert math.isnan(psi(ref, np.array([])))
    assert all(math.isnan(v) for v in ks(np.array([np.nan]), ref))


def test_drift_rows_flag_only_the_shifted_feature(rng):
    ref = {"a": rng.normal(0, 1, 5000), "b": rng.normal(5, 2, 5000)}
    sample = {"a": rng.normal(0, 1, 2000), "b": rng.normal(7, 2, 2000)}  # b moved by one sigma
    rows = drift_rows(ref, "slice-0009", sample, ChecklistSpec())
    by = {r["feature"]: r for r in rows}
    assert by["a"]["within"] and not by["b"]["within"]
    assert by["b"]["psi"] > 0.5 and by["b"]["ks_stat"] > 0.3
    assert all(r["slice"] == "slice-0009" and r["rows"] == 2000 for r in rows)


def test_drift_bounds_are_each_enforced(rng):
    ref = {"a": rng.normal(0, 1, 20_000)}
    sample = {"a": rng.normal(0.15, 1, 20_000)}  # small shift: low PSI and KS statistic, tiny p-value
    assert drift_rows(ref, "s", sample, ChecklistSpec())[0]["within"]
    assert not drift_rows(ref, "s", sample, ChecklistSpec(ks_pvalue_min=0.01))[0]["within"]
    assert not drift_rows(ref, "s", sample, ChecklistSpec(psi_max=0.005))[0]["within"]
    assert not drift_rows(ref, "s", sample, ChecklistSpec(ks_stat_max=0.01))[0]["within"]
    assert drift_rows(ref, "s", sample, ChecklistSpec(ks_stat_max=None, psi_max=1))[0]["within"]


def test_check_drift_names_the_worst_pair_and_its_numbers(rng):
    cfg = ChecklistSpec()
    ref = {"a": rng.normal(0, 1, 5000)}
    rows = drift_rows(ref, "ok", {"a": rng.normal(0, 1, 1000)}, cfg) + drift_rows(ref, "bad", {"a": rng.normal(2, 1, 1000)}, cfg)
    res = check_drift(rows, cfg)
    assert not res.passed and "bad/a" in res.detail and "psi_max 0.25" in res.detail
    assert res.numbers["pairs_drifted"] == 1 and res.numbers["psi_max_seen"] > 1
    ok = check_drift(rows[:1], cfg)
    assert ok.passed and ok.numbers["pairs_drifted"] == 0
    assert check_drift([], cfg).passed


@pytest.mark.parametrize("age_s, bound, passed", [(100, None, True), (100, 3600, True), (7200, 3600, False)])
def test_freshness(age_s, bound, passed):
    res = check_freshness(newest_mtime_s=1_000_000.0, now_s=1_000_000.0 + age_s, max_age_s=bound)
    assert res.passed is passed and res.numbers["age_s"] == age_s


def test_schema_reports_missing_changed_and_unexpected_columns():
    expected = {"f0": "numeric", "f1": "numeric", "y": "numeric"}
    good = {"slice-0": {"f0": "numeric", "f1": "numeric", "y": "numeric"}}
    assert check_schema(expected, good, exact=True).passed
    bad = {"slice-1": {"f0": "numeric", "f1": "string", "y": "numeric", "f2": "numeric"},
           "slice-2": {"f0": "numeric", "y": "numeric"}}
    res = check_schema(expected, bad, exact=True)
    assert not res.passed
    assert "slice-1: type changed f1 string!=numeric" in res.detail and "slice-1: unexpected f2" in res.detail
    assert "slice-2: missing f1" in res.detail and res.numbers["mismatches"] == 3
    assert check_schema(expected, {"s": {**good["slice-0"], "extra": "numeric"}}, exact=False).passed


def test_schema_fails_when_the_champion_expects_other_features():
    expected = {"f0": "numeric", "y": "numeric"}
    res = check_schema(expected, {"s": dict(expected)}, exact=True, model_features=8, n_features=1)
    assert not res.passed and "champion expects 8 features, the data has 1" in res.detail


def test_harness_outcomes():
    assert check_harness(500, None, 3, None).passed
    assert "no champion yet" in check_harness(500, None, None, None).detail
    assert not check_harness(None, "cannot read table", None, None).passed
    assert not check_harness(0, None, None, None).passed
    res = check_harness(500, None, 2, "model file missing")
    assert not res.passed and "champion not loadable: model file missing" in res.detail


def test_outcome_lists_failed_items_in_its_dict():
    outcome = ChecklistOutcome((check_freshness(0, 10, None), check_harness(0, None, None, None)))
    assert not outcome.passed and [r.item for r in outcome.failed] == ["harness"]
    d = outcome.to_dict()
    assert d["failed_items"] == ["harness"] and d["items"][0]["item"] == "data_fresh"


def test_type_kind():
    assert type_kind(pa.int64()) == type_kind(pa.float32()) == "numeric"
    assert type_kind(pa.string()) == "string"
    assert type_kind(pa.timestamp("s")).startswith("timestamp")

"""Choose one start per run so that the pool is never over-subscribed and the total cost is least.

Input: for each run, its feasible start slots with their costs (cheapest first), its worker count and
its length in slots; the pool's capacity. Output: a start per run, or ``None`` where the run cannot
be placed. Placing runs one at a time ("greedy") can be much worse than placing them together: a
long job that takes the cheapest night may push three short jobs into the day. So:

1. **Relaxation.** Every run at its own cheapest start. If that respects the capacity it is optimal
   (no plan can beat each run's individual minimum) -- the common case, and free.
2. **Components.** Runs whose reachable slot ranges never overlap cannot compete for the pool; they are
   solved apart, and a component whose relaxation fits is done.
3. **Exact search.** A conflicting component is a time-indexed 0-1 program: ``x[r, c] = 1`` if run
   ``r`` starts at candidate ``c``; each run takes exactly one candidate or a "skip" priced above any
   plan's total cost (so the most runs are placed first, then the cost is least); for every slot the
   workers of the windows covering it are at most the capacity. HiGHS (through SciPy, which
   scikit-learn already requires) solves it to a zero relative gap, deterministically; a run that
   hits ``time_limit_s`` keeps the best plan found and says it is not proven optimal.

``strategy="greedy"`` (runs in release order, each at its cheapest start that still fits) is kept as
the baseline the portfolio is measured against, and as the fallback when SciPy is missing.

>>> runs = [Candidates(workers=1, n_slots=2, starts=np.array([0, 2]), costs=np.array([1.0, 1.5])),
...         Candidates(workers=1, n_slots=2, starts=np.array([0, 4]), costs=np.array([1.0, 3.0]))]
>>> solve_portfolio(runs, capacity=1).starts
(2, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np


@dataclass(frozen=True)
class Candidates:
    """A run's feasible starts (slot indices) and their costs, cheapest first."""

    workers: int
    n_slots: int
    starts: np.ndarray
    costs: np.ndarray


@dataclass(frozen=True)
class Solution:
    starts: tuple[int | None, ...]  # per run, in input order; None = not placed
    total_cost: float
    proven_optimal: bool
    method: str  # "relaxation", "milp", "greedy"
    note: str = ""


def _cost_of(c: Candidates, start: int) -> float:
    return float(c.costs[int(np.flatnonzero(c.starts == start)[0])])


def _over_capacity(runs: Sequence[Candidates], starts: Sequence[int | None], capacity: int) -> bool:
    size = max((int(c.starts.max()) + c.n_slots for c in runs), default=0)
    usage = np.zeros(size, dtype=np.int64)
    for c, s in zip(runs, starts):
        if s is not None:
            usage[s:s + c.n_slots] += c.workers
    return bool((usage > capacity).any())


def components(runs: Sequence[Candidates]) -> list[list[int]]:
    """Groups of run indices whose reachable slot ranges overlap, transitively (sorted, deterministic)."""
    spans = sorted((int(c.starts.min()), int(c.starts.max()) + c.n_slots, i) for i, c in enumerate(runs))
    groups: list[list[int]] = []
    reach = -1
    for first, end, i in spans:
        if groups and first < reach:
            groups[-1].append(i)
            reach = max(reach, end)
        else:
            groups.append([i])
            reach = end
    return [sorted(g) for g in groups]


def greedy(runs: Sequence[Candidates], capacity: int) -> list[int | None]:
    """Runs in order of their earliest start, each at its cheapest start that still fits."""
    size = max((int(c.starts.max()) + c.n_slots for c in runs), default=0)
    usage = np.zeros(size, dtype=np.int64)
    chosen: list[int | None] = [None] * len(runs)
    for i in sorted(range(len(runs)), key=lambda i: (int(runs[i].starts.min()), i)):
        c = runs[i]
        for s in c.starts.tolist():
            if int(usage[s:s + c.n_slots].max()) + c.workers <= capacity:
                usage[s:s + c.n_slots] += c.workers
                chosen[i] = s
                break
    return chosen


def shortlist(runs: Sequence[Candidates]) -> list[Candidates]:
    """Drop candidates no optimal plan needs (exact, not a heuristic).

    A window of run ``r`` overlaps a window of run ``j`` only for ``n_j + n_r - 1`` of r's starts. So
    among r's ``B + 1`` cheapest starts, with ``B`` that sum over every run that can reach r's range,
    one overlaps no other window, whatever the others chose; it fits alone (``workers <= capacity``
    is checked before), so a plan using a dearer start of r is never better than one using it.
    """
    spans = [(int(c.starts.min()), int(c.starts.max()) + c.n_slots) for c in runs]
    kept = []
    for r, c in enumerate(runs):
        blocked = sum(o.n_slots + c.n_slots - 1 for j, o in enumerate(runs)
                      if j != r and spans[j][0] < spans[r][1] and spans[r][0] < spans[j][1])
        kept.append(Candidates(c.workers, c.n_slots, c.starts[:blocked + 1], c.costs[:blocked + 1]))
    return kept


def _milp(runs: Sequence[Candidates], capacity: int, time_limit_s: float) -> tuple[list[int | None], bool] | None:
    """The exact 0-1 program for one component (SciPy's HiGHS); None when it found nothing."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    runs = shortlist(runs)
    n_runs = len(runs)
    n_cand = sum(len(c.starts) for c in runs)
    n_vars = n_cand + n_runs  # candidates, then one skip per run
    skip_penalty = 1.0 + sum(float(c.costs.max()) for c in runs)
    cost = np.concatenate([np.concatenate([c.costs for c in runs]), np.full(n_runs, skip_penalty)])
    owner = np.concatenate([np.full(len(c.starts), r) for r, c in enumerate(runs)] + [np.arange(n_runs)])
    one_each = coo_matrix((np.ones(n_vars), (owner, np.arange(n_vars))), shape=(n_runs, n_vars))
    rows, cols, vals = [], [], []
    var = 0
    for c in runs:
        for s in c.starts.tolist():
            rows.append(np.arange(s, s + c.n_slots))
            cols.append(np.full(c.n_slots, var))
            vals.append(np.full(c.n_slots, float(c.workers)))
            var += 1
    slots = np.concatenate(rows)
    size = int(slots.max()) + 1
    usage = coo_matrix((np.concatenate(vals), (slots, np.concatenate(cols))), shape=(size, n_vars)).tocsr()
    # Only slots where the windows that could cover them might exceed the pool can bind.
    worst = np.zeros(size)
    for c in runs:
        reach = np.zeros(size, dtype=bool)
        for s in c.starts.tolist():
            reach[s:s + c.n_slots] = True
        worst += reach * c.workers
    binding = np.flatnonzero(worst > capacity)
    constraints = [LinearConstraint(one_each.tocsr(), 1, 1)]
    if len(binding):
        constraints.append(LinearConstraint(usage[binding], -np.inf, capacity))
    result = milp(cost, integrality=np.ones(n_vars), bounds=Bounds(0, 1), constraints=constraints,
                  options={"mip_rel_gap": 0.0, "time_limit": time_limit_s})
    if result.x is None:
        return None
    x = result.x > 0.5
    chosen: list[int | None] = []
    offset = 0
    for c in runs:
        picked = np.flatnonzero(x[offset:offset + len(c.starts)])
        chosen.append(int(c.starts[picked[0]]) if len(picked) else None)
        offset += len(c.starts)
    return chosen, result.status == 0


def solve_portfolio(runs: Sequence[Candidates], capacity: int, *,
                    strategy: Literal["optimal", "greedy"] = "optimal", time_limit_s: float = 30.0) -> Solution:
    """One start per run (or None), never over ``capacity`` workers in any slot, at least total cost."""
    if strategy == "greedy":
        chosen = greedy(runs, capacity)
        return Solution(tuple(chosen), _total(runs, chosen), False, "greedy")
    chosen: list[int | None] = [int(c.starts[0]) for c in runs]
    if not _over_capacity(runs, chosen, capacity):
        return Solution(tuple(chosen), _total(runs, chosen), True, "relaxation")
    proven, methods, notes = True, set(), []
    for group in components(runs):
        sub = [runs[i] for i in group]
        if not _over_capacity(sub, [chosen[i] for i in group], capacity):
            continue
        solved = _milp(sub, capacity, time_limit_s)
        if solved is None:
            (picked, ok), method = (greedy(sub, capacity), False), "greedy"
            notes.append("SciPy/HiGHS unavailable or found nothing: greedy placement, not proven optimal")
        else:
            (picked, ok), method = solved, "milp"
            if not ok:
                notes.append(f"HiGHS stopped at the {time_limit_s:.0f} s limit: best plan found, not proven optimal")
        proven &= ok
        methods.add(method)
        for i, s in zip(group, picked):
            chosen[i] = s
    return Solution(tuple(chosen), _total(runs, chosen), proven, "+".join(sorted(methods)) or "relaxation",
                    "; ".join(dict.fromkeys(notes)))


def _total(runs: Sequence[Candidates], chosen: Sequence[int | None]) -> float:
    return float(sum(_cost_of(c, s) for c, s in zip(runs, chosen) if s is not None))

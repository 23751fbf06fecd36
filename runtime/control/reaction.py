"""Reaction time: from the governor deciding PAUSE to every worker of the job stopped and released.

The governor measures each one (:meth:`runtime.control.governor.Governor._note_release`); the job's
summary, its post-mortem and the benchmarks report them through :func:`reaction_stats`.

>>> reaction_stats([0.2, 0.4])["median_s"]
0.30000000000000004
"""

from __future__ import annotations

import numpy as np


def reaction_stats(reactions_s: list[float]) -> dict:
    if not reactions_s:
        return {"count": 0, "median_s": None, "p95_s": None, "max_s": None, "all_s": []}
    arr = np.asarray(reactions_s)
    return {"count": len(arr), "median_s": float(np.median(arr)), "p95_s": float(np.percentile(arr, 95)),
            "max_s": float(arr.max()), "all_s": [round(float(v), 4) for v in arr]}

"""When jobs should run, and starting them then.

- ``history``: per-minute traffic history from CSV or Prometheus range queries;
- ``profile``: the weekly load profile and its forecast;
- ``placement``: where each job's window fits the predicted headroom (pure);
- ``portfolio``: one start per run so the pool is never over-subscribed and the total cost is least;
- ``plan`` and ``plan_report``: the jobs file in, ``plan.json``, ``.ics`` and a report out (:func:`make_plan`);
- ``scheduler``: a queued job starts when its planned window opens.
"""

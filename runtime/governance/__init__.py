"""What must hold before and after a job.

- ``checklist``: the pre-work checks (data freshness, schema, drift, harness);
- ``gate``: validation of the candidate against the champion on the holdout;
- ``lineage``: which data slices a model version was trained on;
- ``postmortem``: the report every run ends with;
- ``runbook``: the on-call runbook for a job;
- ``job``: :class:`JobGovernance`, which runs all of the above around one job.
"""

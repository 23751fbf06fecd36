"""One governed job, start to finish.

- ``job``: :func:`run_job` -- warm start, checklist, lease, rounds of training, validation, release;
- ``summary``: the law's settings from a spec, and the run's summary.
"""

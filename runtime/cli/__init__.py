"""The ``headroom`` command line: argument parsing only, each command group calling the library.

- ``main``: the entry point; ``jobs``: run, submit, status, pause, resume; ``planning``: plan;
  ``governance``: report, runbook; ``release``: promote, rollback, rollout.
"""

"""The record of every job, in MLflow.

- ``tracker``: the job's MLflow run (params, metrics, artifacts), model registration and the champion;
- ``buffer``: metrics buffered while MLflow is unreachable, written when it is back.
"""

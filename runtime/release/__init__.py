"""From candidate to champion, and back.

- ``gates``: the pure release gates: shadow test, staged rollout, the risk budget that triggers rollback;
- ``stats``: the router's records summarised into what the gates judge (pure);
- ``rollout``: the controller that drives a champion/challenger router and acts on the gates' decisions;
- ``report``: the rollout report;
- ``registry``: moving model aliases safely (promote, roll back, abort), each recorded in MLflow.
"""

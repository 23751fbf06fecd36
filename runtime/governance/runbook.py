"""The on-call runbook of a job, rendered from its spec as Markdown (``headroom runbook SPEC.yaml``).

Everything in it comes from the spec, so it cannot drift from what the job really does: the steps
the driver takes, when the governor pauses the job, the risk budget it may spend, how to roll back,
and whom to call.

>>> print(render_runbook(load_spec("jobs/demo.yaml", check_paths=False)))  # doctest: +SKIP
"""

from __future__ import annotations

from runtime.spec.job import JobSpec


def render_runbook(spec: JobSpec) -> str:
    parts = [_header(spec), _contacts(spec), _steps(spec), _pause_criteria(spec), _risk_budget(spec),
             _rollback(spec), _where_to_look(spec)]
    return "\n\n".join(parts) + "\n"


def _header(spec: JobSpec) -> str:
    owner = spec.owner or next((c.name for c in spec.contacts if c.role.lower() == "owner"), None)
    return (f"# Runbook: `{spec.name}`\n\n"
            f"Governed, non-critical retraining of `{spec.model.estimator}` ({spec.model.framework}) on the slices "
            f"under `{spec.data.path}`. Owner: {owner or '**none set** (add `owner:` or a contact with role owner)'}.\n"
            f"Training yields to serving: pausing it is always safe, and a paused job resumes from its checkpoint "
            f"with every row consumed exactly once.")


def _contacts(spec: JobSpec) -> str:
    if not spec.contacts:
        return "## Contacts\n\nNone in the spec: add `contacts: [{name, role, channel}]`."
    rows = "\n".join(f"| {c.name} | {c.role} | {c.channel} |" for c in spec.contacts)
    return "## Contacts\n\n| name | role | channel |\n|---|---|---|\n" + rows


def _steps(spec: JobSpec) -> str:
    c, v = spec.checklist, spec.validation
    checks = {
        "data_fresh": f"data present and fresh: newest slice younger than {_s(c.max_data_age_s)}",
        "schema": "schema: new slices carry the training columns with the reference's types",
        "drift": (f"drift: per new slice and feature, PSI <= {c.psi_max:g}"
                  + (f", KS statistic <= {c.ks_stat_max:g}" if c.ks_stat_max is not None else "")
                  + (f", KS p-value >= {c.ks_pvalue_min:g}" if c.ks_pvalue_min is not None else "")
                  + f" against `{c.reference or v.holdout}`"),
        "harness": f"validation harness: holdout `{v.holdout}` readable, champion loadable",
    }
    enabled = "\n".join(f"   - {checks[i]}" for i in c.items) or "   - (no items enabled)"
    gate = [f"holdout `{v.metric}` of the candidate >= the champion's + {v.min_improvement:g}"]
    if v.min_relative_improvement is not None:
        gate.append(f"and >= the champion's by {v.min_relative_improvement:.1%} of it")
    if v.min_score is not None:
        gate.append(f"and >= {v.min_score:g} absolute")
    return ("## Steps\n\n"
            "1. **Pre-work checklist** (before any lease is taken; a failed item stops the job, nothing trains):\n"
            f"{enabled}\n"
            f"2. **Warm start** ({spec.model.warm_start}): newest valid checkpoint, else the `champion` model version.\n"
            f"3. **Train under the governor**: up to {spec.budget.max_workers} worker(s) on the `training_pool`, "
            f"checkpoint every {spec.checkpoint.every_steps} steps to `{spec.checkpoint.storage}`.\n"
            f"4. **Validation gate**: MLflow evaluation of candidate and champion on the same holdout; "
            f"{' '.join(gate)}. Pass: the version gets alias `challenger`; fail: it is registered without an alias.\n"
            "5. **Post-mortem**: `postmortem/postmortem.md` (with plots) on the MLflow run; "
            "read it with `headroom report RUN_ID`.\n"
            "6. **Release** (a human or the release gates): `challenger` becomes `champion` only through them.")


def _pause_criteria(spec: JobSpec) -> str:
    s, b = spec.serving, spec.budget
    util = (f"- serving load above {s.max_utilization:.0%} of {s.capacity_rps:g} req/s capacity\n"
            if s.capacity_rps else "")
    hung = (f"- a running worker the governor has not heard from for {b.worker_hung_s:g} s (stopped, frozen) loses "
            "its slot and a fresh worker takes it\n" if b.worker_hung_s else "")
    return ("## Pause criteria (the governor acts on its own; nothing to do unless it persists)\n\n"
            f"- serving p99 above the SLO of {s.slo_p99_ms:g} ms (telemetry: `{s.telemetry}` {s.url or ''})\n"
            f"{util}"
            f"- telemetry missing, failing or older than {s.stale_after_s:g} s (serving first: no data means no headroom)\n"
            f"- a worker that cannot hear the governor for {b.governor_silence_s:g} s stops itself\n"
            f"{hung}"
            f"- after a pause the job stays paused at least {b.cooldown_s:g} s and grows again only after "
            f"{b.holddown_s:g} s of ample slack\n"
            "- by hand: `headroom pause " + spec.name + "` / `headroom resume " + spec.name + "`")


def _risk_budget(spec: JobSpec) -> str:
    b, cost = spec.budget, spec.cost
    cpus = b.max_workers * b.cpus_per_worker
    price = (f"; at {cost.price_per_cpu_hour:g} {cost.currency}/CPU-hour that is at most "
             f"{cpus * cost.price_per_cpu_hour:.4g} {cost.currency} per hour" if cost.price_per_cpu_hour else "")
    return ("## Risk budget\n\n"
            f"- at most {b.max_workers} worker(s) x {b.cpus_per_worker:g} CPU = {cpus:g} CPUs{price}\n"
            f"- ingestion at most {b.max_rows_per_s:g} rows/s; workers and driver run at nice +{b.worker_nice}"
            f"{' in the SCHED_IDLE class' if b.worker_sched == 'idle' else ''}\n"
            f"- a paused worker keeps its slot {b.park_s:g} s, then the slot is released\n"
            f"- reaction from headroom lost to training released: poll ({b.poll_interval_s:g} s) + the telemetry's read "
            "+ one step + one checkpoint")


def _rollback(spec: JobSpec) -> str:
    n = spec.name
    return ("## Rollback\n\n"
            "This job never moves `champion` itself: a failed or bad run leaves serving untouched.\n\n"
            f"1. A bad `challenger`: remove its alias (`MlflowClient().delete_registered_model_alias('{n}', 'challenger')`); "
            "the next run is judged against the same champion.\n"
            f"2. A bad `champion` after a release: `headroom rollback {n}` moves `champion` back to the version under "
            "alias `previous-champion`.\n"
            "3. A bad checkpoint: the newest valid one is used automatically; to start over from the champion, "
            f"clear `{spec.checkpoint.storage}/{n}` (the job then warm-starts from `champion`).\n"
            "4. Every run records the checkpoint or model version it started from (tag `headroom.lineage.start`) "
            "and the exact slices it consumed (MLflow dataset inputs with digests): the rollback target of any "
            "version is its run's start.")


def _where_to_look(spec: JobSpec) -> str:
    t = spec.tracking
    return ("## Where to look\n\n"
            f"- `headroom status --watch`: level, lease, rows/s, p99, last reason\n"
            f"- MLflow ({t.uri}, experiment `{t.experiment}`): one run per job; `governor/decisions.json`, "
            "`postmortem/postmortem.md`, tags `headroom.checklist.*`\n"
            f"- alerts: `examples/alerts.yml` (SLO breached while training holds workers, job paused too long, "
            "telemetry stale, governor absent)")


def _s(value: float | None) -> str:
    return "(no bound set)" if value is None else f"{value:g} s"

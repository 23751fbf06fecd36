"""``headroom promote | rollback | rollout``: thin fronts over :mod:`runtime.release.registry` and :mod:`runtime.release.rollout`."""

from __future__ import annotations

import json
import logging
import os
import sys

from runtime.cli.jobs import add_json, add_out, write_atomically
from runtime.errors import ReleaseError

DEFAULT_URI = "sqlite:///mlflow.db"


def register(sub) -> None:
    p = sub.add_parser("promote", help="make the challenger (or --version) champion; the old one becomes previous-champion")
    p.add_argument("name", help="registered model name (the job's name)")
    p.add_argument("--version", type=int, help="version to promote (default: the one aliased challenger)")
    _tracking_args(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="point champion back at previous-champion")
    p.add_argument("name", help="registered model name (the job's name)")
    _tracking_args(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("rollout", help="shadow-test the challenger, then stage it in through a running router")
    p.add_argument("spec", help="job spec (YAML): its name, release plan, tracking store and metric")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else the local one)")
    p.add_argument("--app", default="headroom-router", help="the router's Ray Serve application name")
    add_out(p, "the result (JSON)")
    add_json(p)
    p.set_defaults(func=cmd_rollout)


def _tracking_args(p) -> None:
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI),
                   help=f"MLflow store (default: $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")
    p.add_argument("--experiment", default="headroom", help="experiment that records the event as a run")
    p.add_argument("--reason", help="why, recorded with the event")
    p.add_argument("--app", help="also point this running router (Ray Serve application) at the new champion, split 0 %%")
    p.add_argument("--address", help="Ray cluster address for --app (default: $RAY_ADDRESS, else the local one)")
    add_json(p)


def cmd_promote(args) -> int:
    from runtime.release.registry import promote

    return _move(args, lambda client: promote(client, args.name, args.version, reason=args.reason or "promoted by hand"))


def cmd_rollback(args) -> int:
    from runtime.release.registry import rollback

    return _move(args, lambda client: rollback(client, args.name, reason=args.reason or "rolled back by hand"))


def _move(args, act) -> int:
    from mlflow import MlflowClient

    from runtime.release.registry import record_move_run

    router = None
    if args.app:  # find the router before moving anything
        from runtime.release.rollout import ServeRouter

        _connect(args.address)
        router = ServeRouter(args.app)
    move = act(MlflowClient(args.tracking_uri))
    run_id = record_move_run(args.tracking_uri, args.experiment, move)
    if router:
        router.configure(0.0, 0.0)
        router.load(move.champion_after, None)
    if args.json:
        print(json.dumps({"name": move.name, "champion_before": move.champion_before, "champion_after": move.champion_after,
                          "previous_champion": move.previous_champion, "mlflow_run_id": run_id, "router": args.app}))
        return 0
    if router:
        print(f"router {args.app!r}: serving v{move.champion_after}, split 0 %")
    print(f"{move.name}: champion v{move.champion_before} -> v{move.champion_after}"
          + (f" (previous-champion: v{move.previous_champion})" if move.previous_champion else "")
          + f"; recorded in MLflow run {run_id}")
    return 0


def cmd_rollout(args) -> int:
    from runtime.release.rollout import ServeRouter, run_rollout
    from runtime.spec.job import load_spec

    spec = load_spec(args.spec, check_paths=False)
    _connect(args.address)

    def show(decision) -> None:
        print(f"[rollout] {decision.action.value:<8} {decision.reason.value:<18} split={decision.split_percent:g}% "
              f"mirror={decision.shadow_fraction:.0%} {decision.detail}", file=sys.stderr, flush=True)

    result = run_rollout(spec.name, spec.release, ServeRouter(args.app), tracking_uri=spec.tracking.uri,
                         experiment=spec.tracking.experiment, metric=spec.validation.metric, on_decision=show)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        write_atomically(args.out, text)
    print(text if args.json else _rollout_text(result))
    return 0 if result["outcome"] == "promoted" else 1


def _rollout_text(result: dict) -> str:
    lines = [f"{result.get('model', '')}: rollout {result['outcome']} ({result.get('reason')}: {result.get('detail')})",
             f"  champion v{result.get('champion_before')} -> v{result.get('champion_after')}; "
             f"MLflow run {result.get('run_id')}; --json for everything"]
    return "\n".join(lines)


def _connect(address: str | None) -> None:
    import ray

    from runtime.loopback import join_private_cluster

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = join_private_cluster()  # this user's headroom run, with its token (else "auto" below)
    try:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False,
                 logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ReleaseError(f"no Ray cluster to connect to ({exc})", where=str(address or "auto"),
                           fix="start the cluster and the router first, or pass --address") from None

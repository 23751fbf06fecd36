"""examples/kubernetes/ against KubeRay's own CRD schemas, and against cluster.yaml.

The CRDs are KubeRay v1.7.0's (ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs}.yaml at tag
v1.7.0, commit 9c13e713c17859f5c2d13bec324c9548b808c8f2 of github.com/ray-project/kuberay), kept
gzipped in examples/kubernetes/crds/. Each manifest must validate against its CRD's v1 schema, and
carry no field the schema does not know (the API server would drop it silently: a typo'd
``rayStartParam`` would start a cluster without its settings). Then the two cluster descriptions
must agree: the same pools, resources, Serve buckets, metrics port and refresh, and token auth, so
that neither can drift from the other."""

from __future__ import annotations

import copy
import gzip
import json
import re
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from runtime.loopback import (CARDINALITY_ENV, METRIC_CARDINALITY, RAY_SYSTEM_CONFIG, SERVE_BUCKETS_ENV,
                              SERVE_LATENCY_BUCKETS_MS)
from runtime.spec.job import load_spec

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "examples" / "kubernetes"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@lru_cache(maxsize=None)
def crd_schema(plural: str) -> dict:
    crd = yaml.load(gzip.decompress((K8S / "crds" / f"ray.io_{plural}.yaml.gz").read_bytes()), Loader=LOADER)
    assert crd["spec"]["group"] == "ray.io"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def manifest(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields of ``obj`` that ``schema`` does not declare (what Kubernetes prunes without a word)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(obj, dict):
        extra = schema.get("additionalProperties")
        props = schema.get("properties")
        if isinstance(extra, dict):
            for k, v in obj.items():
                found += unknown_fields(v, extra, f"{path}.{k}")
        elif props is not None:
            for k, v in obj.items():
                found += [f"{path}.{k}"] if k not in props else unknown_fields(v, props[k], f"{path}.{k}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            found += unknown_fields(v, schema["items"], f"{path}[{i}]")
    return found


def check(doc: dict, plural: str) -> list[str]:
    """Every problem of ``doc`` against KubeRay's schema: invalid values, then unknown fields."""
    schema = crd_schema(plural)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    return errors + [f"{p}: unknown field" for p in unknown_fields(doc, schema)]


def test_the_raycluster_and_the_rayjob_validate_against_kuberays_crds():
    assert check(manifest("raycluster.yaml"), "rayclusters") == []
    assert check(manifest("rayjob.yaml"), "rayjobs") == []


@pytest.mark.parametrize("breakage, plural, expect", [
    (lambda d: d["spec"]["headGroupSpec"].update(rayStartParam=d["spec"]["headGroupSpec"].pop("rayStartParams")),
     "rayclusters", "headGroupSpec.rayStartParam: unknown field"),
    (lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas="two"), "rayclusters", "is not of type 'integer'"),
    (lambda d: d["spec"]["authOptions"].update(mode="tokens"), "rayclusters", "is not one of"),
    (lambda d: d["spec"].update(entryPoint=d["spec"].pop("entrypoint")), "rayjobs", "spec.entryPoint: unknown field"),
    (lambda d: d["spec"].update(activeDeadlineSeconds="4h"), "rayjobs", "is not of type 'integer'"),
], ids=["typo", "wrong-type", "bad-auth-mode", "rayjob-typo", "rayjob-wrong-type"])
def test_the_check_catches_what_the_api_server_would_refuse_or_silently_drop(breakage, plural, expect):
    doc = copy.deepcopy(manifest("raycluster.yaml" if plural == "rayclusters" else "rayjob.yaml"))
    breakage(doc)
    assert any(expect in problem for problem in check(doc, plural)), check(doc, plural)


def _groups() -> dict[str, dict]:
    spec = manifest("raycluster.yaml")["spec"]
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def _env(group: dict) -> dict[str, str]:
    (container,) = group["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def _resources(group: dict) -> dict:
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}  # KubeRay passes it to `ray start` as a quoted JSON string


def test_the_raycluster_carries_the_same_pools_resources_and_settings_as_cluster_yaml():
    import ray

    launcher = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types, groups = launcher["available_node_types"], _groups()
    assert set(groups) == set(types) == {"head", "serving", "training"}
    # Resources: no tasks on the head; serving and training pools marked as the governor and Serve expect.
    assert float(groups["head"]["rayStartParams"]["num-cpus"]) == types["head"]["resources"]["CPU"] == 0
    for pool in ("serving", "training"):
        assert _resources(groups[pool]) == types[pool]["resources"], pool
        assert (groups[pool]["minReplicas"], groups[pool]["maxReplicas"]) == (types[pool]["min_workers"], types[pool]["max_workers"])
    # Every node: the embedded default's Serve buckets, and the metrics port the governor scrapes.
    buckets = ",".join(f"{b:g}" for b in SERVE_LATENCY_BUCKETS_MS)
    launcher_port = re.search(r"--metrics-export-port=(\d+)", " ".join(launcher["head_start_ray_commands"])).group(1)
    for name, group in groups.items():
        assert _env(group)[SERVE_BUCKETS_ENV] == buckets, name
        assert _env(group)[CARDINALITY_ENV] == METRIC_CARDINALITY, name
        assert group["rayStartParams"]["metrics-export-port"] == launcher_port, name
    head_config = json.loads(groups["head"]["rayStartParams"]["system-config"])
    assert head_config == RAY_SYSTEM_CONFIG
    # Token auth on both; the Ray version the project pins.
    assert "RAY_AUTH_MODE=token" in " ".join(launcher["head_start_ray_commands"])
    spec = manifest("raycluster.yaml")["spec"]
    assert spec["authOptions"]["mode"] == "token" and spec["rayVersion"] == ray.__version__
    pinned = re.search(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE).group(1)
    assert spec["rayVersion"] == pinned
    assert f"rayproject/ray:{pinned}-" in (K8S / "Dockerfile").read_text()


def test_the_rayjob_runs_the_retrain_module_on_that_cluster_with_a_spec_that_loads():
    job, cluster = manifest("rayjob.yaml")["spec"], manifest("raycluster.yaml")
    assert job["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    match = re.fullmatch(r"python -m jobs\.retrain (\S+)", job["entrypoint"])
    assert match, job["entrypoint"]
    spec_path = Path(match.group(1))
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    (volume,) = [v for v in head["volumes"] if v["name"] in mounts and str(spec_path.parent) == mounts[v["name"]]]
    assert volume["configMap"]["name"] == "headroom-retrain-spec"
    assert f"--from-file={spec_path.name}=examples/kubernetes/retrain.yaml" in (K8S / "rayjob.yaml").read_text()
    spec = load_spec(K8S / "retrain.yaml", check_paths=False)
    assert spec.serving.telemetry == "ray_serve" and spec.data.path.startswith("s3://")
    submitter_env = {e["name"]: e for e in job["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert submitter_env["RAY_AUTH_MODE"]["value"] == "token"
    assert submitter_env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == cluster["spec"]["authOptions"]["secretName"]

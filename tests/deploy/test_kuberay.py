"""deploy/kuberay: every overlay builds with kustomize, every document it yields is valid (core kinds
against Kubernetes' schemas, RayCluster/RayJob against KubeRay v1.7.0's CRDs, PodMonitors against
the pods they select), and the image, the GPUs per worker and the job file are each set in one place."""

from __future__ import annotations

import base64
import os
import shlex
import shutil
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.jobspec import load_job
from tests.deploy.manifests import (
    DOCKER_DIR,
    IMAGE,
    KUBERAY_DIR,
    OVERLAYS,
    build,
    by_kind,
    containers,
    gpu_limit,
    gpu_values,
    pod_templates,
    ray_cluster_spec,
)

KUBERNETES_VERSION = "1.32"
CRD_DIR = Path(__file__).parent / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1"}
JOB_MOUNT = "/etc/sam3/job"
WATCHLIST_MOUNT = "/etc/sam3/watchlists"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, build(KUBERAY_DIR / "overlays" / request.param)


def test_both_overlays_exist():
    assert {"live-cameras", "archive"} <= set(OVERLAYS)


# --- schemas -----------------------------------------------------------------------------------

def _closed(schema: dict) -> dict:
    """The schema with unknown fields rejected, as the API server's strict field validation does:
    a misspelt field must fail here, not be pruned silently on apply."""
    out = {k: v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: _closed(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _closed(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_closed(s) for s in out[key]]
    return out


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((CRD_DIR / CRD_FILES[kind]).read_text())
    assert crd["spec"]["names"]["kind"] == kind
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_closed(version["schema"]["openAPIV3Schema"]))


def test_ray_documents_match_kuberay_crds(overlay):
    _, docs = overlay
    ray_docs = [d for d in docs if d["apiVersion"].startswith("ray.io/")]
    assert ray_docs
    for doc in ray_docs:
        assert doc["apiVersion"] == "ray.io/v1"
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=str)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])


def test_core_documents_match_kubernetes_schemas(overlay):
    _, docs = overlay
    core = [d for d in docs if d["apiVersion"] in CORE_GROUPS]
    assert {"ConfigMap", "Secret"} <= {d["kind"] for d in core}
    for doc in core:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_strict_crd_schema_rejects_a_misspelt_field():
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
               "spec": {"headGroupSpec": {"template": {"spec": {"containers": []}}}, "enableInTreeAutoscalling": True}}
    assert any("enableInTreeAutoscalling" in e.message for e in crd_validator("RayCluster").iter_errors(cluster))


def test_every_document_kind_is_known(overlay):
    _, docs = overlay
    for doc in docs:
        known = doc["apiVersion"] in CORE_GROUPS or doc["kind"] in CRD_FILES or doc["kind"] == "PodMonitor"
        assert known, f"no validation for {doc['apiVersion']} {doc['kind']}"


# --- the Ray cluster -----------------------------------------------------------------------------

def _ray_pin() -> str:
    pins = {line.split("ray[default]==")[1].split('"')[0] for p in DOCKER_DIR.glob("Dockerfile*")
            for line in p.read_text().splitlines() if "ray[default]==" in line}
    assert len(pins) == 1, f"the images must pin one ray version, found {pins}"
    return pins.pop()


def test_ray_cluster_shape(overlay):
    """Head without a GPU, GPU workers, autoscaler v2, token auth, the image's Ray version."""
    _, docs = overlay
    clusters = [ray_cluster_spec(d) for d in docs if ray_cluster_spec(d) is not None]
    assert len(clusters) == 1
    [cluster] = clusters
    assert cluster["rayVersion"] == _ray_pin()
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["version"] == "v2"
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]
    assert all(gpu_limit(c) is None for c in head["template"]["spec"]["containers"])
    assert head["rayStartParams"].get("num-gpus", "0") == "0"
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert int(gpu_limit(worker) or 0) >= 1, f"worker group {group['groupName']} has no nvidia.com/gpu limit"
        assert group["minReplicas"] >= 1, "the driver needs a GPU when it starts"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        requested = worker["resources"].get("requests", {}).get("nvidia.com/gpu")
        assert requested in (None, gpu_limit(worker)), "a GPU request must equal its limit"


def test_overlay_workloads():
    live = build(KUBERAY_DIR / "overlays" / "live-cameras")
    assert [d["metadata"]["name"] for d in by_kind(live, "RayCluster")] == ["sam3"]
    assert not by_kind(live, "RayJob")
    [submitter] = by_kind(live, "Job")
    script = " ".join(submitter["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "ray job submit --address http://sam3-head-svc:8265" in script
    env = {e["name"]: e for e in submitter["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    [cluster] = by_kind(live, "RayCluster")
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == cluster["spec"]["authOptions"]["secretName"]

    archive = build(KUBERAY_DIR / "overlays" / "archive")
    assert not by_kind(archive, "RayCluster"), "the archive overlay's RayCluster is only the RayJob's template"
    [job] = by_kind(archive, "RayJob")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_images_are_pinned(overlay):
    _, docs = overlay
    found = list(containers(docs))
    assert found
    for template, container in found:
        image = container["image"]
        name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        assert name and tag and "/" not in tag and tag != "latest", f"{template.owner}: image {image!r} is not pinned"
        assert container.get("imagePullPolicy") != "Always" or "@" in image


def _references(node, path=()):
    """(kind, name) of every ConfigMap, Secret and PVC a document refers to."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMap", "configMapRef", "configMapKeyRef") and isinstance(value, dict):
                yield "ConfigMap", value["name"]
            elif key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                yield "Secret", value["name"]
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                yield "Secret", value["secretName"]
            elif key == "persistentVolumeClaim" and isinstance(value, dict):
                yield "PersistentVolumeClaim", value["claimName"]
            elif key == "authOptions" and "secretName" in value:
                yield "Secret", value["secretName"]
            yield from _references(value, (*path, key))
    elif isinstance(node, list):
        for item in node:
            yield from _references(item, path)


def test_every_reference_resolves_in_the_build(overlay):
    """Generated names carry a hash: each reference, in CRDs too, must name a document of the build."""
    _, docs = overlay
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    refs = {r for d in docs for r in _references(d)}
    assert refs
    missing = refs - present
    assert not missing, f"references to documents the build does not hold: {sorted(missing)}"


def test_secrets_hold_placeholders_only():
    for env_file in sorted((KUBERAY_DIR / "base" / "secrets").glob("*.env")):
        for line in env_file.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition("=")
                if any(word in key.upper() for word in ("TOKEN", "PASSWORD", "USER")):
                    assert value.startswith("REPLACE-ME"), f"{env_file.name}: {key} must be a placeholder"


# --- metrics -------------------------------------------------------------------------------------

def _pods_selected(monitor: dict, docs: list[dict]):
    selector = monitor["spec"]["selector"]
    for doc in docs:
        for template in pod_templates(doc):
            labels = dict(template.labels)
            if template.node_type:
                labels["ray.io/node-type"] = template.node_type  # KubeRay labels its pods so
            if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
                continue
            if all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
                   if e["operator"] == "In"):
                yield template


def test_pod_monitors_scrape_named_ports_of_real_pods(overlay):
    _, docs = overlay
    monitors = {d["metadata"]["name"]: d for d in by_kind(docs, "PodMonitor")}
    assert set(monitors) == {"sam3-stream", "sam3-ray"}
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["podMetricsEndpoints"] and monitor["spec"]["selector"]
        pods = list(_pods_selected(monitor, docs))
        assert pods, f"PodMonitor {name} selects no pod"
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for pod in pods:
                ports = {p["name"] for c in pod.containers for p in c.get("ports", [])}
                assert endpoint["port"] in ports, f"PodMonitor {name}: {pod.owner} {pod.node_type} has no port {endpoint['port']}"
    ray_ports = {p["containerPort"] for pod in _pods_selected(monitors["sam3-ray"], docs)
                 for c in pod.containers for p in c.get("ports", []) if p["name"] == "metrics"}
    assert ray_ports == {8080}
    # the app's series carry the job file's `job` label, which alerts and dashboard group by
    assert all(e.get("honorLabels") is True for e in monitors["sam3-stream"]["spec"]["podMetricsEndpoints"])


# --- the job file and the command that runs it -----------------------------------------------------

def _configmap(docs: list[dict], prefix: str) -> dict:
    [cm] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    return cm


def _head(docs: list[dict]):
    return next(t for d in docs for t in pod_templates(d) if t.node_type == "head")


def _head_env(docs: list[dict]) -> dict[str, str]:
    """The head container's environment as the driver sees it (Secrets decoded)."""
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    container = _head(docs).spec["containers"][0]
    env = {}
    for source in container.get("envFrom", []):
        data = secrets[source["secretRef"]["name"]]["data"]
        env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _sam3_command(docs: list[dict]) -> list[str]:
    for job in by_kind(docs, "RayJob"):
        return shlex.split(job["spec"]["entrypoint"])
    [submitter] = by_kind(docs, "Job")
    script = " ".join(submitter["spec"]["template"]["spec"]["containers"][0]["args"])
    return shlex.split(script.split(" -- ", 1)[1])


def test_the_job_file_loads_as_mounted_on_the_head(overlay, tmp_path):
    """The ConfigMaps as the head mounts them, the head's environment: the job file validates."""
    _, docs = overlay
    head = _head(docs)
    mounts = {m["name"]: m["mountPath"] for m in head.spec["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head.spec["volumes"]}
    for prefix, mount in (("sam3-job", JOB_MOUNT), ("sam3-watchlists", WATCHLIST_MOUNT)):
        cm = _configmap(docs, prefix)
        [volume] = [n for n, v in volumes.items() if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
        assert mounts[volume] == mount
        target = tmp_path / mount.lstrip("/")
        target.mkdir(parents=True)
        for key, text in cm["data"].items():
            (target / key).write_text(text)
    command = _sam3_command(docs)
    assert command[0] == "sam3-stream"
    args = build_parser().parse_args(command[1:])
    assert args.command == "run" and args.job == f"{JOB_MOUNT}/job.yaml"
    env = _head_env(docs)
    assert env["SAM3_WATCHLIST_PATH"] == WATCHLIST_MOUNT
    env["SAM3_WATCHLIST_PATH"] = str(tmp_path / WATCHLIST_MOUNT.lstrip("/"))
    job = load_job(tmp_path / args.job.lstrip("/"), env)
    assert (job.streams or job.index is not None) and job.metrics.port == 9464
    sam3_ports = {p["containerPort"] for p in head.spec["containers"][0]["ports"] if p["name"] == "sam3-metrics"}
    assert sam3_ports == {job.metrics.port}
    if job.sinks.kafka is not None:
        assert not job.sinks.kafka.embedded, "the embedded broker is for single-machine runs"
        assert job.sinks.kafka.client["sasl_plain_password"] == env["KAFKA_PASSWORD"]


# --- one place for each knob ---------------------------------------------------------------------

def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected one {old!r}"
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("name", OVERLAYS)
def test_image_gpus_and_job_file_are_set_in_one_place(name, tmp_path):
    """Change each knob where the overlay says it lives: every place that must follow does."""
    tree = tmp_path / "kuberay"
    shutil.copytree(KUBERAY_DIR, tree)
    overlay = tree / "overlays" / name
    _edit(overlay / "kustomization.yaml", "newTag: 0.1.0-cu128", "newTag: 9.9.9-test")
    _edit(overlay / "kustomization.yaml", 'value: "1"', 'value: "3"')
    _edit(overlay / "job.yaml", "max_batch:", "max_batch: 5  # was:")
    before, after = build(KUBERAY_DIR / "overlays" / name), build(overlay)

    images = [c["image"] for _, c in containers(after)]
    assert images and all(i == "registry.example.com/sam3-stream:9.9.9-test" for i in images)
    workers = [c for t, c in containers(after) if t.node_type == "worker"]
    assert workers and all(gpu_values(c) and set(gpu_values(c)) == {"3"} for c in workers)
    assert all(not gpu_values(c) for t, c in containers(after) if t.node_type != "worker")
    job_text = _configmap(after, "sam3-job")["data"]["job.yaml"]
    assert "max_batch: 5" in job_text
    new_job_cm = _configmap(after, "sam3-job")["metadata"]["name"]
    assert new_job_cm != _configmap(before, "sam3-job")["metadata"]["name"], "a new job file must be a new ConfigMap"
    assert {n for k, n in _references(after) if k == "ConfigMap"} >= {new_job_cm}
    for doc in after:
        if doc["kind"] in CRD_FILES:
            assert not list(crd_validator(doc["kind"]).iter_errors(doc))


@pytest.mark.parametrize("name", OVERLAYS)
def test_an_overlay_used_as_a_resource_takes_another_image_and_gpu_count(name, tmp_path):
    """A user's own kustomization on top of an overlay: `images:` and one patch change every place."""
    built = build(KUBERAY_DIR / "overlays" / name)
    [ray] = [d for d in built if d["kind"] in CRD_FILES]
    prefix = "/spec" if ray["kind"] == "RayCluster" else "/spec/rayClusterSpec"
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUBERAY_DIR / "overlays" / name, tmp_path)],  # kustomize wants it relative
        "images": [{"name": "registry.example.com/sam3-stream", "newName": "mirror.example.org/ml/sam3",
                    "newTag": "2.0.0"}],
        "patches": [{"target": {"kind": ray["kind"], "name": ray["metadata"]["name"]}, "patch": yaml.safe_dump([
            {"op": "replace", "value": "2",
             "path": f"{prefix}/workerGroupSpecs/0/template/spec/containers/0/resources/limits/nvidia.com~1gpu"}])}],
    }))
    docs = build(tmp_path)
    assert all(c["image"] == "mirror.example.org/ml/sam3:2.0.0" for _, c in containers(docs))
    assert [gpu_values(c) for t, c in containers(docs) if t.node_type == "worker"] == [["2"]]
    assert IMAGE not in {c["image"] for _, c in containers(docs)}

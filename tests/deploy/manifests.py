"""Reading the deploy/ files for the tests: kustomize builds, pod templates and containers of every kind."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
KUBERAY_DIR = REPO / "deploy" / "kuberay"
OVERLAYS = sorted(p.parent.name for p in (KUBERAY_DIR / "overlays").glob("*/kustomization.yaml"))
IMAGE = "sam3-stream"  # the image name the base manifests use; overlays rename it with `images:`


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl (with its built-in kustomize) is needed to build deploy/kuberay: apt-get install kubectl"
    return path


def build(directory: Path) -> list[dict]:
    """``kubectl kustomize DIRECTORY`` as a list of documents; a failed build fails with kustomize's message."""
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kustomize build of {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@dataclass(frozen=True)
class PodTemplate:
    """A pod template found in a document, with the Ray node type KubeRay gives its pods (None outside Ray)."""

    owner: str  # "Kind/name"
    node_type: str | None
    group: str | None
    spec: dict
    labels: dict

    @property
    def containers(self) -> list[dict]:
        return self.spec.get("containers", []) + self.spec.get("initContainers", [])


def ray_cluster_spec(doc: dict) -> dict | None:
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    if doc["kind"] == "RayJob":
        return doc["spec"]["rayClusterSpec"]
    return None


def pod_templates(doc: dict) -> Iterator[PodTemplate]:
    owner = f"{doc['kind']}/{doc['metadata']['name']}"
    cluster = ray_cluster_spec(doc)
    if cluster is not None:
        head = cluster["headGroupSpec"]["template"]
        yield PodTemplate(owner, "head", None, head["spec"], head.get("metadata", {}).get("labels", {}))
        for group in cluster.get("workerGroupSpecs", []):
            t = group["template"]
            yield PodTemplate(owner, "worker", group["groupName"], t["spec"], t.get("metadata", {}).get("labels", {}))
        submitter = doc["spec"].get("submitterPodTemplate") if doc["kind"] == "RayJob" else None
        if submitter:
            yield PodTemplate(owner, None, None, submitter["spec"], submitter.get("metadata", {}).get("labels", {}))
    elif doc["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        t = doc["spec"]["template"]
        yield PodTemplate(owner, None, None, t["spec"], t.get("metadata", {}).get("labels", {}))


def containers(docs: list[dict]) -> Iterator[tuple[PodTemplate, dict]]:
    for doc in docs:
        for template in pod_templates(doc):
            for container in template.containers:
                yield template, container


def gpu_limit(container: dict) -> str | None:
    return container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")


def gpu_values(container: dict) -> list[str]:
    """Every nvidia.com/gpu amount the container states (limits, and requests if given)."""
    resources = container.get("resources", {})
    return [resources[k]["nvidia.com/gpu"] for k in ("limits", "requests") if "nvidia.com/gpu" in resources.get(k, {})]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]

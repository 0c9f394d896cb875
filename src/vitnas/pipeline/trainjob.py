"""Multi-node training stages on Kubeflow Trainer: the pipeline step creates a `TrainJob`, waits for
it, shows its logs and hands its output on as the step's artifact.

Why a TrainJob and not a bigger pod: one pod cannot span nodes. Kubeflow Trainer's
`torch-distributed` runtime starts `numNodes` pods and gives each the `PET_*` variables torchrun
reads (`PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`), so
the trainer's command is only `torchrun -m vitnas.pipeline.runtime CALL.json`: the same worker entry
point as a one-pod torchrun stage, with the same data-parallel semantics (ranks = nodes x GPUs).

The nodes cannot see the step's local files, so the step copies its input artifacts into the
pipeline's ReadWriteMany volume (`--checkpoint-pvc`, mounted at the same path in the step and in
every node), the stage writes its output and checkpoints there, and the step copies the output back
into its KFP artifact. A retried step finds the TrainJob it created (running: it waits; failed: it
starts a new one, which resumes from the checkpoints on the volume).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"  # Kubeflow Trainer's default ClusterTrainingRuntime for PyTorch
NODE = "node"  # the runtime's replicated job and trainer container
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # the TrainJob's JobSet (same name) labels its pods
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
PASSED_ENV = ("VITNAS_PIPELINE_RUN_ID", "VITNAS_CODE_VERSION", "MLFLOW_TRACKING_URI")  # the step's, to every node


@dataclass(frozen=True)
class TrainJobSpec:
    """What the compiled pipeline tells a training step about the TrainJob it creates."""

    nodes: int
    nproc_per_node: int
    image: str
    pvc: str  # ReadWriteMany volume shared by the step and the nodes
    mount: str  # where both mount it
    accelerator: str = "nvidia.com/gpu"
    gpus: int = 0  # per node
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)  # Kubernetes Toleration objects
    secret: str | None = None
    secret_keys: list[str] = field(default_factory=list)
    shm_size: str | None = None
    runtime: str = RUNTIME
    poll_s: float = 15.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJobSpec:
        return cls(**json.loads(text))


def job_name(stage: str, run_id: str) -> str:
    """A DNS-1035 name (<= 63 characters; the JobSet's pods add suffixes), unique per run and stage."""
    return f"vitnas-{stage}-{hashlib.sha256(f'{run_id}/{stage}'.encode()).hexdigest()[:10]}"


def manifest(spec: TrainJobSpec, name: str, namespace: str, call_file: str,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob (trainer.kubeflow.org/v1alpha1) that runs one stage's call on `spec.nodes` nodes."""
    resources: dict[str, dict[str, str]] = {}
    if spec.gpus:
        resources = {"limits": {spec.accelerator: str(spec.gpus)}, "requests": {spec.accelerator: str(spec.gpus)}}
    for key, value in (("cpu", spec.cpu), ("memory", spec.memory)):
        if value:
            resources.setdefault("requests", {})[key] = value
    env_vars: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted((env or {}).items())]
    if spec.secret:
        env_vars += [{"name": k, "valueFrom": {"secretKeyRef": {"name": spec.secret, "key": k, "optional": True}}}
                     for k in spec.secret_keys if k not in (env or {})]
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": ["torchrun", "-m", "vitnas.pipeline.runtime", call_file],
        "numNodes": spec.nodes,
        "numProcPerNode": spec.nproc_per_node,
        "env": env_vars,
    }
    if resources:
        trainer["resourcesPerNode"] = resources
    volumes: list[dict[str, Any]] = [{"name": "vitnas-work", "persistentVolumeClaim": {"claimName": spec.pvc}}]
    mounts: list[dict[str, Any]] = [{"name": "vitnas-work", "mountPath": spec.mount}]
    if spec.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    pod: dict[str, Any] = {"volumes": volumes, "containers": [{"name": NODE, "volumeMounts": mounts}]}
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    patch = {"manager": "vitnas", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "vitnas"}},
        "spec": {"runtimeRef": {"name": spec.runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
                 "trainer": trainer, "runtimePatches": [patch]},
    }


def condition(job: dict[str, Any]) -> tuple[str, str] | None:
    """("Complete" | "Failed", message) once the TrainJob has finished, else None."""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and str(c.get("status")) == "True":
            return c["type"], c.get("message") or c.get("reason") or ""
    return None


class TrainJobFailed(RuntimeError):
    pass


def run(stage: str, call: dict[str, Any], spec: TrainJobSpec, *, workdir: Path, custom=None, core=None,
        namespace: str | None = None, run_id: str | None = None, log=print) -> None:
    """Create (or find) the stage's TrainJob for `call` (the torchrun worker's call.json), wait for it
    and print its rank-0 logs; raises `TrainJobFailed` with the job's message and the end of its logs.
    `custom`/`core`: kubernetes CustomObjectsApi/CoreV1Api (default: in-cluster)."""
    if custom is None or core is None:
        from kubernetes import client, config

        config.load_incluster_config()
        custom, core = custom or client.CustomObjectsApi(), core or client.CoreV1Api()
    namespace = namespace or Path(NAMESPACE_FILE).read_text().strip()
    run_id = run_id or os.environ.get("VITNAS_PIPELINE_RUN_ID") or "local"
    name = job_name(stage, run_id)
    call_file = workdir / "call.json"
    call_file.write_text(json.dumps(call))
    env = {k: os.environ[k] for k in PASSED_ENV if os.environ.get(k)}
    body = manifest(spec, name, namespace, str(call_file), env)

    job = _get(custom, namespace, name)
    if job is not None and condition(job) is not None:  # a retried step: start over from the checkpoints
        log(f"TrainJob {namespace}/{name} {condition(job)[0].lower()} before; creating it again")
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        _wait_gone(custom, namespace, name, spec.poll_s)
        job = None
    if job is None:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        log(f"created TrainJob {namespace}/{name}: {spec.nodes} nodes x {spec.nproc_per_node} processes")
    else:
        log(f"waiting for the running TrainJob {namespace}/{name}")
    while True:
        job = _get(custom, namespace, name)
        done = condition(job) if job is not None else ("Failed", "the TrainJob was deleted")
        if done is not None:
            break
        time.sleep(spec.poll_s)
    logs = _logs(core, namespace, name)
    if logs:
        log(logs)
    kind, message = done
    if kind != "Complete":
        tail = "\n".join(logs.splitlines()[-20:])
        raise TrainJobFailed(f"{stage}: TrainJob {namespace}/{name} failed: {message}" + (f"\n{tail}" if tail else ""))
    log(f"TrainJob {namespace}/{name} complete")


def _get(custom, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _wait_gone(custom, namespace: str, name: str, poll_s: float) -> None:
    while _get(custom, namespace, name) is not None:
        time.sleep(poll_s)


def _logs(core, namespace: str, name: str) -> str:
    """The logs of the node-0 pod (rank 0 reports; the others only train)."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"{JOBSET_LABEL}={name}").items
    pods = sorted(pods, key=lambda p: p.metadata.name)
    if not pods:
        return ""
    try:
        return core.read_namespaced_pod_log(pods[0].metadata.name, namespace, container=NODE) or ""
    except Exception as e:  # a pod gone before its logs were read: the job's status still says why
        return f"(logs of {pods[0].metadata.name} unavailable: {type(e).__name__})"


def stage_call(stage: str, params_json: str, args: list, kwargs: dict, workdir: Path) -> tuple[dict[str, Any], Path]:
    """(call.json, output directory on the volume) for `run_stage`'s positional args (inputs..., out):
    the inputs are copied into `workdir` (the nodes cannot see the step's artifacts), the output and
    the result are written there."""
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = []
    for i, src in enumerate(map(Path, args[:-1])):
        dst = workdir / "inputs" / f"{i}-{src.name}"
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        inputs.append(str(dst))
    out = workdir / "output"
    call = {"stage": stage, "params": params_json, "args": [*inputs, str(out)], "kwargs": kwargs,
            "result": str(workdir / "result.json")}
    return call, out

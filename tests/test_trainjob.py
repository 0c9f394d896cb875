"""Multi-node training on Kubeflow Trainer: the TrainJob a step creates (checked against the Trainer
API's own models), the step's wait/log/failure handling, and the multi-node rendezvous path run
locally: two "nodes" of one process each on loopback give the weights of one node with two."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from kubernetes.client.exceptions import ApiException

from vitnas.config import parse_params
from vitnas.errors import ConfigError
from vitnas.pipeline import trainjob
from vitnas.pipeline.dag import ClusterOptions, Toleration, compile_pipeline

TINY = {"supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64},
        "space": {"embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2], "mlp_ratio": [2.0]},
        "proxy": {"num_candidates": 2}, "search": {"population": 2, "parents": 1},
        "tracking": {"enabled": False}}


def _compiled(tmp_path, **kw) -> dict:
    opts = ClusterOptions(image="registry.example/vitnas:abc1234", gpus=8, node_selector={"pool": "h100"},
                          tolerations=(Toleration.parse("nvidia.com/gpu:NoSchedule"),), secret="vitnas-credentials",
                          checkpoint_pvc="vitnas-work", **kw)
    return list(yaml.safe_load_all(compile_pipeline(parse_params({}), tmp_path / "p.yaml", opts).read_text()))


def test_nodes_compile_to_trainjob_steps_whose_manifest_the_trainer_api_accepts(tmp_path):
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    spec, platform = _compiled(tmp_path, nodes=4)
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for stage in ("supernet", "retrain"):
        job = trainjob.TrainJobSpec.from_json(tasks[f"{stage}-op"]["inputs"]["parameters"]["trainjob"]
                                              ["runtimeValue"]["constant"])
        assert (job.nodes, job.nproc_per_node, job.gpus, job.pvc) == (4, 8, 8, "vitnas-work")
        # the step only creates and watches the job: no GPU, no GPU node, but the shared volume
        assert "accelerator" not in executors[f"exec-{stage}-op"]["container"].get("resources", {})
        assert "tolerations" not in k8s[f"exec-{stage}-op"]
        assert k8s[f"exec-{stage}-op"]["pvcMount"][0]["constant"] == "vitnas-work"
    for stage in ("search", "slim"):  # one pod each, as before
        assert "trainjob" not in tasks[f"{stage}-op"]["inputs"]["parameters"]

    m = trainjob.manifest(job, trainjob.job_name("supernet", "run-123"), "team-a", "/vitnas-checkpoints/x/call.json",
                          {"VITNAS_PIPELINE_RUN_ID": "run-123"})
    parsed = TrainerV1alpha1TrainJob.from_dict(m)
    assert parsed.to_dict() == m  # every field is one the Trainer API knows, with the type it expects
    t = m["spec"]["trainer"]
    assert t["command"] == ["torchrun", "-m", "vitnas.pipeline.runtime", "/vitnas-checkpoints/x/call.json"]
    assert (t["numNodes"], t["numProcPerNode"]) == (4, 8)
    assert t["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8"}
    env = {e["name"]: e for e in t["env"]}
    assert env["VITNAS_PIPELINE_RUN_ID"]["value"] == "run-123"
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "vitnas-credentials", "key": "MLFLOW_TRACKING_URI", "optional": True}
    pod = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = pod["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "vitnas-work", "persistentVolumeClaim": {"claimName": "vitnas-work"}} in pod["volumes"]
    assert {"name": "vitnas-work", "mountPath": "/vitnas-checkpoints"} in pod["containers"][0]["volumeMounts"]
    name = trainjob.job_name("retrain", "a" * 200)
    assert len(name) <= 63 and name == trainjob.job_name("retrain", "a" * 200)

    with pytest.raises(ConfigError, match="--nodes 2: needs --checkpoint-pvc"):
        compile_pipeline(parse_params({}), tmp_path / "q.yaml", ClusterOptions(nodes=2))


class FakeCluster:
    """CustomObjectsApi + CoreV1Api as far as the step uses them: a TrainJob whose status moves
    through `statuses` one poll at a time."""

    def __init__(self, statuses, existing=None, logs="epoch 1/1  loss 2.30\n"):
        self.statuses, self.job, self.created, self.deleted, self.logs = list(statuses), existing, [], [], logs

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.job is None:
            raise ApiException(status=404)
        if self.statuses:
            self.job = {**self.job, "status": self.statuses.pop(0)}
        return self.job

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        self.created.append(body)
        self.job = dict(body)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)
        self.job = None

    def list_namespaced_pod(self, namespace, label_selector):
        assert label_selector.startswith("jobset.sigs.k8s.io/jobset-name=vitnas-supernet-")
        return SimpleNamespace(items=[SimpleNamespace(metadata=SimpleNamespace(name=n))
                                      for n in ("x-node-0-1", "x-node-0-0")])

    def read_namespaced_pod_log(self, pod, namespace, container):
        assert (pod, container) == ("x-node-0-0", "node")  # rank 0's pod
        return self.logs


def cond(kind, message=""):
    return {"conditions": [{"type": "Created", "status": "True"}, {"type": kind, "status": "True",
                                                                   "message": message}]}


def test_step_creates_waits_shows_logs_and_fails_with_the_reason(tmp_path):
    spec = trainjob.TrainJobSpec(nodes=2, nproc_per_node=1, image="i", pvc="v", mount=str(tmp_path), poll_s=0)
    said = []
    ok = FakeCluster([{}, {"conditions": [{"type": "Created", "status": "True"}]}, cond("Complete")])
    trainjob.run("supernet", {"stage": "supernet"}, spec, workdir=tmp_path, custom=ok, core=ok, namespace="ns",
                 run_id="r1", log=said.append)
    assert len(ok.created) == 1 and ok.created[0]["metadata"]["namespace"] == "ns"
    assert json.loads((tmp_path / "call.json").read_text()) == {"stage": "supernet"}
    assert any("epoch 1/1" in s for s in said) and said[-1].endswith("complete")

    bad = FakeCluster([cond("Failed", "node-1 OOMKilled")], logs="\n".join(f"line {i}" for i in range(50)))
    with pytest.raises(trainjob.TrainJobFailed, match=r"(?s)supernet: TrainJob ns/vitnas-supernet-\w+ failed: "
                                                      r"node-1 OOMKilled\nline 30\n.*line 49$"):
        trainjob.run("supernet", {}, spec, workdir=tmp_path, custom=bad, core=bad, namespace="ns", run_id="r1",
                     log=said.append)

    # a retried step: its failed job is replaced (the new one resumes from the checkpoints); a running one is joined
    name = trainjob.job_name("supernet", "r1")
    retry = FakeCluster([cond("Failed"), {}, cond("Complete")], existing={"metadata": {"name": name}})
    trainjob.run("supernet", {}, spec, workdir=tmp_path, custom=retry, core=retry, namespace="ns", run_id="r1",
                 log=said.append)
    assert retry.deleted == [name] and len(retry.created) == 1
    running = FakeCluster([{}, cond("Complete")], existing={"metadata": {"name": name}})
    trainjob.run("supernet", {}, spec, workdir=tmp_path, custom=running, core=running, namespace="ns", run_id="r1",
                 log=said.append)
    assert running.created == [] and running.deleted == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_over_c10d_train_the_weights_of_one_node_with_two_processes(digits_dir, tmp_path):
    """The TrainJob's own command (`torchrun -m vitnas.pipeline.runtime CALL`), with the PET_* variables
    Kubeflow Trainer sets, on two local "nodes" of 1 process meeting through a c10d rendezvous, equals
    `torchrun --standalone --nproc_per_node 2` of the same call."""
    from vitnas.supernet import Supernet

    params = parse_params(TINY).model_dump_json()
    job = trainjob.TrainJobSpec(nodes=2, nproc_per_node=1, image="i", pvc="v", mount=str(tmp_path))
    command = trainjob.manifest(job, "j", "ns", "CALL")["spec"]["trainer"]["command"]
    exe = [str(Path(sys.executable).parent / command[0]), *command[1:-1]]
    kwargs = {"progress": False, "resume": False}
    base = {**os.environ, "OMP_NUM_THREADS": "1"}

    call, out2 = trainjob.stage_call("supernet", params, [str(digits_dir), "unused"], kwargs, tmp_path / "nodes")
    (tmp_path / "nodes" / "call.json").write_text(json.dumps(call))
    port = _free_port()
    procs = [subprocess.Popen([*exe, str(tmp_path / "nodes" / "call.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**base, "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(i),
                                   "PET_RDZV_BACKEND": "c10d", "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
                                   "PET_RDZV_ID": "vitnas-test", "PET_MAX_RESTARTS": "0"})
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)

    single, out1 = trainjob.stage_call("supernet", params, [str(digits_dir), "unused"], kwargs, tmp_path / "one")
    (tmp_path / "one" / "call.json").write_text(json.dumps(single))
    r = subprocess.run([*exe[:1], "--standalone", "--nproc_per_node", "2", *exe[1:],
                        str(tmp_path / "one" / "call.json")], capture_output=True, text=True, env=base, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]

    a, b = (Supernet.load(d / "supernet.pt").state_dict() for d in (out2, out1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m2, m1 = (json.loads(Path(c["result"]).read_text()) for c in (call, single))
    assert m2["train_loss"] == m1["train_loss"]

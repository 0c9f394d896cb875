"""The vitnas pipeline as a Kubeflow DAG: compile to YAML, run it here through kfp.local, or submit it.

    init -> data -> supernet -----> search -> slim -> retrain -> transfer
                 \\-> proxy -----/
                    (or ParallelFor k < K: proxy shard k -> proxy merge, with `proxy_shards` K)

Parameters: every scalar key of params.yaml is a typed pipeline parameter (`supernet_epochs: int`;
nullable keys as text with "" for null: `data_root: str`, `data_max_train_images: str`); lists and
transfer targets travel as JSON in `params_json` (KFP parameters cannot hold null); defaults are
the params.yaml given at compile time. The `init` step merges and validates
them and opens the MLflow parent run of this pipeline run.

Cluster settings (image, GPUs, node selector, tolerations, /dev/shm, secret) are fixed at compile
time by `ClusterOptions`. (No `from __future__ import annotations` here: kfp reads the real
annotation objects.)
"""

import builtins
import inspect
import os
import subprocess
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl

from vitnas.config import Params
from vitnas.errors import ConfigError
from vitnas.files import atomic_file
from vitnas.pipeline.components import (
    data_op,
    proxy_merge_op,
    proxy_op,
    proxy_plan_op,
    proxy_shard_op,
    retrain_op,
    search_op,
    slim_op,
    supernet_op,
    transfer_op,
)
from vitnas.pipeline.components.image import DEFAULT_REPOSITORY
from vitnas.pipeline.components.init import init_op
from vitnas.pipeline.k8s import (
    check_count,
    check_dns_subdomain,
    check_image,
    check_label_key,
    check_label_value,
    check_quantity,
)
from vitnas.pipeline.runtime import PIPELINE_RUN_ENV, split_params, typed_params
from vitnas.pipeline.trainjob import TrainJobSpec
from vitnas.stages._io import FileKind, starts_with
from vitnas.stages.contract import STAGES
from vitnas.tracking import CODE_VERSION_ENV

PIPELINE_NAME = "vitnas"
# The first line of every compiled pipeline: how `vitnas pipeline compile` knows a file at --out is
# one it may replace.
PIPELINE_HEADER = "# vitnas pipeline, compiled by `vitnas pipeline compile`: recompile rather than edit\n"
PIPELINE_FILE = FileKind("compiled vitnas pipeline", starts_with(PIPELINE_HEADER))
RUN_ID_LABEL = "metadata.labels['pipeline/runid']"  # KFP labels every pod of a run with its run id
# What each stage needs on the cluster comes from its contract (`vitnas.stages.contract`).
GPU_STAGES = tuple(n for n, s in STAGES.items() if s.gpu)
TORCHRUN_STAGES = tuple(n for n, s in STAGES.items() if s.data_parallel)  # all of `gpus` GPUs under torchrun
CHECKPOINT_STAGES = tuple(n for n, s in STAGES.items() if s.checkpoints)  # checkpoints on the PVC when given
MULTINODE_STAGES = tuple(n for n, s in STAGES.items() if s.multinode)  # --nodes M: a TrainJob of M nodes
CHECKPOINT_MOUNT = "/vitnas-checkpoints"
# Keys of the cluster secret handed to every pod as environment variables; all optional but
# MLFLOW_TRACKING_URI (unless given with --mlflow-uri), so a wrong secret name fails at pod start.
SECRET_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
               "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
# Steps that may read the dataset root (the data step always; the others when data.root holds
# image files that were indexed, not sharded): a --data-pvc is mounted into each.
DATA_STAGES = ("data", "supernet", "proxy", "proxy-merge", "search", "slim", "retrain", "transfer")
DATA_MOUNT = "/data"
# Steps that need little: CPU and memory requests of their own, not the training steps' --cpu/--memory.
LIGHT_STAGES = {"init": ("500m", "1Gi"), "proxy-plan": ("500m", "1Gi"), "proxy-merge": ("1", "2Gi"),
                "data": ("2", "8Gi")}


class Outputs(NamedTuple):
    """The pipeline's output artifacts, one per stage."""

    data: dsl.Dataset
    supernet: dsl.Model
    proxy: dsl.Artifact
    search: dsl.Artifact
    slim: dsl.Model
    retrain: dsl.Model
    transfer: dsl.Artifact


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    value: str | None = None
    effect: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "Toleration":
        """`key=value:Effect`, `key:Effect` (any value), `key=value` or `key` (any effect)."""
        rest, _, effect = spec.partition(":")
        key, eq, value = rest.partition("=")
        if effect and effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ConfigError(f"--toleration {spec}: effect must be NoSchedule, PreferNoSchedule or NoExecute")
        if not key or (eq and not value):
            raise ConfigError(f"--toleration {spec}: expected key[=value][:Effect]")
        check_label_key("--toleration", key)
        if value:
            check_label_value("--toleration", value)
        return cls(key, value or None, effect or None)

    @property
    def operator(self) -> str:
        return "Equal" if self.value else "Exists"

    def to_k8s(self) -> dict[str, str]:
        """The Kubernetes Toleration object (unset fields left out)."""
        return {k: v for k, v in (("key", self.key), ("operator", self.operator), ("value", self.value),
                                  ("effect", self.effect)) if v}


@dataclass(frozen=True)
class ClusterOptions:
    """How the compiled pipeline runs on Kubernetes (ignored by kfp.local)."""

    image: str = f"{DEFAULT_REPOSITORY}:latest"
    gpus: int = 1  # per data-parallel training stage: accelerator limit and torchrun nproc_per_node
    accelerator: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)  # GPU stages only
    tolerations: tuple[Toleration, ...] = ()  # GPU stages only
    secret: str | None = None  # Kubernetes secret with SECRET_KEYS, as env vars of every pod
    mlflow_uri: str | None = None  # MLFLOW_TRACKING_URI of every pod (else from the secret)
    shm_size: str | None = "8Gi"  # memory-backed /dev/shm of GPU stages (DataLoader workers, NCCL)
    cpu: str | None = "4"  # CPU request of every stage but init
    memory: str | None = "16Gi"  # memory request of every stage but init
    cache_supernet: bool = True  # False: the supernet trains again even when KFP holds one of equal key
    caching: bool = True  # KFP caching of the other stages (never for init: it opens the MLflow parent
    # run; never with a ':latest' image, which could hold another code version)
    code_version: str | None = None  # VITNAS_CODE_VERSION of every pod (an MLflow tag of each run)
    checkpoint_pvc: str | None = None  # PersistentVolumeClaim for the training stages' checkpoints
    retries: int = 2  # retries of a failed or preempted stage pod (it resumes from its checkpoints)
    proxy_shards: int = 1  # > 1: proxy scoring fanned out to this many pods (ParallelFor) and merged
    nodes: int = 1  # > 1: supernet and retrain run as TrainJobs of this many nodes x `gpus` (needs checkpoint_pvc)
    data_pvc: str | None = None  # PersistentVolumeClaim holding datasets, mounted at `data_mount` in DATA_STAGES
    data_mount: str = DATA_MOUNT

    def __post_init__(self) -> None:
        """Every setting checked as Kubernetes would check it, before any compile work."""
        check_image("--image", self.image)
        check_count("--gpus", self.gpus, 0)
        check_label_key("--accelerator", self.accelerator)
        for key, value in self.node_selector.items():
            check_label_key("--node-selector", key)
            check_label_value("--node-selector", value)
        for name, flag in ((self.secret, "--secret"), (self.checkpoint_pvc, "--checkpoint-pvc"),
                           (self.data_pvc, "--data-pvc")):
            if name is not None:
                check_dns_subdomain(flag, name)
        if self.mlflow_uri is not None and (not self.mlflow_uri.isprintable() or any(
                c.isspace() for c in self.mlflow_uri) or not self.mlflow_uri):
            raise ConfigError(f"--mlflow-uri {self.mlflow_uri!r}: spaces or control characters in a URI")
        for value, flag in ((self.shm_size, "--shm-size"), (self.cpu, "--cpu"), (self.memory, "--memory")):
            if value is not None:
                check_quantity(flag, value)
        if not self.data_mount.startswith("/") or self.data_mount == "/" or not self.data_mount.isprintable() \
                or any(c.isspace() for c in self.data_mount) or ".." in self.data_mount.split("/"):
            raise ConfigError(f"--data-pvc: mount path {self.data_mount!r} must be an absolute path other than /")
        check_count("--retries", self.retries, 0)
        check_count("--proxy-shards", self.proxy_shards, 1)
        check_count("--nodes", self.nodes, 1)
        if self.nodes > 1 and not self.checkpoint_pvc:
            raise ConfigError(f"--nodes {self.nodes}: needs --checkpoint-pvc, a ReadWriteMany volume the "
                              "TrainJob's nodes share with the pipeline step (inputs, output and checkpoints "
                              "travel through it)")


def _param_docs() -> str:
    """Google-style docstring of the pipeline: KFP shows each Args entry as the parameter's description."""
    lines = ["The vitnas pipeline.", "", "Args:",
             "    params_json: every params.yaml key without a typed parameter, as JSON."]
    lines += [f"    {p.name}: {p.description}" for p in typed_params()]
    return "\n".join(lines)


def build(default_params: Params, options: ClusterOptions | None = None, *, proxy_shards: int | None = None):
    """The pipeline with `default_params` as its parameter defaults; `options=None` builds it for
    kfp.local (no Kubernetes settings, stages in-process). `proxy_shards` overrides the options'."""
    local = options is None
    opts = options or ClusterOptions(gpus=0)
    shards = opts.proxy_shards if proxy_shards is None else proxy_shards
    if shards < 1:
        raise ConfigError(f"--proxy-shards {shards}: must be >= 1")
    trainjob = trainjob_spec(opts).to_json() if opts.nodes > 1 and not local else ""
    caching = opts.caching and not opts.image.endswith(":latest")
    typed_defaults, rest_json = split_params(default_params)
    names = ["params_json"] + [p.name for p in typed_params()]
    signature = inspect.Signature(
        [inspect.Parameter("params_json", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=rest_json,
                           annotation=str)]
        + [inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=typed_defaults[p.name],
                             annotation=p.type) for p in typed_params()],
        return_annotation=Outputs)

    def configure(task, stage: str, name: str | None = None):
        task.set_display_name(name or stage)
        if stage == "init":
            task.set_caching_options(False)
        elif stage == "supernet":
            task.set_caching_options(opts.cache_supernet and caching)
        else:
            task.set_caching_options(caching)
        if local:
            return task
        if stage != "init" and opts.retries:
            task.set_retry(num_retries=opts.retries, backoff_duration="60s", backoff_factor=2)
        _kubernetes(task, stage, opts)
        return task

    def vitnas_pipeline(*args) -> Outputs:
        values = dict(zip(names, args, strict=True))
        init = configure(init_op()(**values), "init")
        params = init.outputs  # one JSON per stage: only the keys it reads (cache keys change with them alone)
        nproc = max(opts.gpus, 1)
        ckpt = CHECKPOINT_MOUNT if opts.checkpoint_pvc and not local else ""
        data = configure(data_op(params=params["data"]), "data")
        supernet = configure(supernet_op(params=params["supernet"], nproc_per_node=nproc, checkpoint_root=ckpt,
                                         trainjob=trainjob, data=data.outputs["data"]), "supernet")
        if shards > 1:  # K pods score every K-th candidate; a small CPU step checks and merges them
            plan = configure(proxy_plan_op(params=params["proxy"], num_shards=shards), "proxy-plan")
            with dsl.ParallelFor(plan.output, name="proxy-shards") as spec:
                part = configure(proxy_shard_op(spec=spec, nproc_per_node=nproc, data=data.outputs["data"]),
                                 "proxy", "proxy-shard")
            proxy = configure(proxy_merge_op(params=params["proxy"], data=data.outputs["data"],
                                             shards=dsl.Collected(part.outputs["proxy_shard"])),
                              "proxy-merge")
        else:
            proxy = configure(proxy_op(params=params["proxy"], nproc_per_node=nproc, data=data.outputs["data"]),
                              "proxy")
        search = configure(search_op(params=params["search"], nproc_per_node=nproc, checkpoint_root=ckpt,
                                     data=data.outputs["data"], supernet=supernet.outputs["supernet"]), "search")
        search.after(proxy)  # the pipeline's stage order; proxy scores are reviewed beside the search
        slim = configure(slim_op(params=params["slim"], nproc_per_node=nproc, data=data.outputs["data"],
                                 supernet=supernet.outputs["supernet"], search=search.outputs["search"]), "slim")
        retrain = configure(retrain_op(params=params["retrain"], nproc_per_node=nproc, checkpoint_root=ckpt,
                                       trainjob=trainjob, data=data.outputs["data"],
                                       supernet=supernet.outputs["supernet"], slim=slim.outputs["slim"]), "retrain")
        transfer = configure(transfer_op(params=params["transfer"], data=data.outputs["data"],
                                         retrain=retrain.outputs["retrain"]), "transfer")
        return Outputs(data=data.outputs["data"], supernet=supernet.outputs["supernet"],
                       proxy=proxy.outputs["proxy"], search=search.outputs["search"], slim=slim.outputs["slim"],
                       retrain=retrain.outputs["retrain"], transfer=transfer.outputs["transfer"])

    vitnas_pipeline.__signature__ = signature
    vitnas_pipeline.__doc__ = _param_docs()
    return dsl.pipeline(name=PIPELINE_NAME,
                        description="ViT architecture search: data -> supernet -> proxy -> search -> slim -> "
                                    f"retrain -> transfer. Image: {opts.image}")(vitnas_pipeline)


def trainjob_spec(opts: ClusterOptions) -> TrainJobSpec:
    """The TrainJob a multi-node training step creates: the pipeline's image, GPUs, node selector,
    tolerations, secret and /dev/shm on every node, and the shared volume."""
    return TrainJobSpec(nodes=opts.nodes, nproc_per_node=max(opts.gpus, 1), image=opts.image,
                        pvc=opts.checkpoint_pvc or "", mount=CHECKPOINT_MOUNT, accelerator=opts.accelerator,
                        gpus=opts.gpus, cpu=opts.cpu, memory=opts.memory, node_selector=dict(opts.node_selector),
                        tolerations=[t.to_k8s() for t in opts.tolerations],
                        secret=opts.secret, secret_keys=list(SECRET_KEYS),
                        shm_size=opts.shm_size)


def _kubernetes(task, stage: str, opts: ClusterOptions) -> None:
    """Image, resources and pod settings of one task on the cluster."""
    from kfp import kubernetes

    task.set_container_image(opts.image)
    kubernetes.use_field_path_as_env(task, PIPELINE_RUN_ENV, RUN_ID_LABEL)
    if opts.code_version:
        task.set_env_variable(CODE_VERSION_ENV, opts.code_version)
    if opts.mlflow_uri:
        task.set_env_variable("MLFLOW_TRACKING_URI", opts.mlflow_uri)
    if opts.secret:  # MLFLOW_TRACKING_URI must be in it (unless given), so a wrong name fails the pod early
        if not opts.mlflow_uri:
            kubernetes.use_secret_as_env(task, opts.secret, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"})
        kubernetes.use_secret_as_env(task, opts.secret, {k: k for k in SECRET_KEYS if k != "MLFLOW_TRACKING_URI"},
                                     optional=True)
    if stage == "init":
        task.set_cpu_request("500m").set_memory_request("1Gi")
        return
    cpu, memory = LIGHT_STAGES.get(stage, (opts.cpu, opts.memory))
    if cpu and opts.cpu:
        task.set_cpu_request(cpu)
    if memory and opts.memory:
        task.set_memory_request(memory)
    if opts.data_pvc and stage in DATA_STAGES:
        kubernetes.mount_pvc(task, pvc_name=opts.data_pvc, mount_path=opts.data_mount)
    if opts.checkpoint_pvc and stage in CHECKPOINT_STAGES:
        kubernetes.mount_pvc(task, pvc_name=opts.checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
    if stage not in GPU_STAGES or (opts.nodes > 1 and stage in MULTINODE_STAGES):  # a TrainJob does the work
        return
    if opts.shm_size:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=opts.shm_size)
    if opts.gpus > 0:
        task.set_accelerator_type(opts.accelerator).set_accelerator_limit(
            opts.gpus if stage in TORCHRUN_STAGES else 1)
        for key, value in opts.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in opts.tolerations:
            kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value,
                                      effect=t.effect)


def compile_pipeline(params: Params, out: str | Path, options: ClusterOptions | None = None) -> Path:
    """Compile to `out` atomically, headed by the line that tells vitnas it wrote the file."""
    out = Path(out)
    pipeline = build(params, options or ClusterOptions())
    with atomic_file(out) as tmp:
        compiler.Compiler().compile(pipeline, str(tmp))
        tmp.write_text(PIPELINE_HEADER + tmp.read_text())
    return out


def pipeline_arguments(params: Params) -> dict:
    """The run arguments that reproduce `params` (typed parameters + params_json)."""
    typed, rest = split_params(params)
    return {"params_json": rest, **typed}


def run_local(params: Params, pipeline_root: str | Path = "local_outputs", *, proxy_shards: int = 1) -> dict[str, str]:
    """Run every stage in subprocesses of this Python environment; returns output artifact paths.

    The stages' MLflow runs land under one parent run, for `VITNAS_PIPELINE_RUN_ID` when set, else
    for a fresh `local-<id>`.
    """
    from kfp import local

    env = {PIPELINE_RUN_ENV: os.environ.get(PIPELINE_RUN_ENV) or f"local-{uuid.uuid4().hex[:8]}"}
    version = git_version(Path(__file__).resolve().parent)
    if version and CODE_VERSION_ENV not in os.environ:
        env[CODE_VERSION_ENV] = version[0] + ("-dirty" if version[1] else "")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    # kfp.local indents task logs by swapping builtins.print per task; the tasks of a ParallelFor
    # run in threads and can leave the swapped one behind: put the real one back afterwards.
    real_print = builtins.print
    try:
        with _environ(env), warnings.catch_warnings():  # the task subprocesses inherit os.environ
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            run = build(params, proxy_shards=proxy_shards)(**pipeline_arguments(params))
    finally:
        builtins.print = real_print
    return {name: a.path for name, a in run.outputs.items()}


@contextmanager
def _environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def git_version(where: Path) -> tuple[str, bool] | None:
    """(short HEAD commit, whether tracked files have uncommitted changes) of the checkout
    holding `where`, or None outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=where, capture_output=True, text=True)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True).stdout.strip()
    except OSError:  # no git executable
        return None
    return sha.stdout.strip(), bool(dirty)


def image_reference(image: str | None, tag: str | None, where: Path) -> tuple[str, list[str]]:
    """(image reference, warnings): `image` (a repository, or a full reference with a tag or digest)
    with `tag`, by default the checkout's short git commit, else `latest`."""
    repo = image or os.environ.get("VITNAS_IMAGE") or DEFAULT_REPOSITORY
    notes: list[str] = []
    last = repo.rsplit("/", 1)[-1]
    if "@" in repo or ":" in last:
        if tag:
            raise ConfigError(f"--image-tag {tag}: --image {repo} already names a tag or digest")
        return repo, notes
    if not tag:
        version = git_version(where)
        if version is None:
            tag = "latest"
            notes.append("not a git checkout: image tag 'latest'")
        else:
            tag = version[0]
            if version[1]:
                notes.append(f"uncommitted changes: build and push the image {repo}:{tag} from this tree, "
                             "or commit first")
    return f"{repo}:{tag}", notes


def submit(package: str | Path, arguments: dict, *, host: str, experiment: str, run_name: str,
           namespace: str | None = None, token: str | None = None) -> tuple[object, str]:
    """Create a run of a compiled pipeline package on a Kubeflow Pipelines API server; returns
    (kfp client, run id)."""
    import kfp

    with warnings.catch_warnings():  # "only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
        warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
        client = kfp.Client(host=host, namespace=namespace, existing_token=token)
    result = client.create_run_from_pipeline_package(str(package), arguments=arguments, run_name=run_name,
                                                     experiment_name=experiment, namespace=namespace,
                                                     enable_caching=None)
    return client, result.run_id

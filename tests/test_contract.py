"""The stage contract is the one place: dvc.yaml follows it, every stage reads only the params.yaml
keys it declares, the Kubeflow steps get only their keys, and DVC experiments compare."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from _helpers import TINY
from pydantic import BaseModel

from vitnas.config import parse_params
from vitnas.stages import contract
from vitnas.stages.contract import STAGES, stage_params

REPO = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_generated_from_the_contract():
    assert (REPO / "dvc.yaml").read_text() == contract.render_dvc_yaml(), "run `vitnas dvc-yaml`"
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert list(dvc["stages"]) == list(contract.ORDER)
    for name, s in STAGES.items():
        entry = dvc["stages"][name]
        assert entry["params"] == s.dvc_params()
        for up, files in s.inputs.items():  # every upstream file it opens is a dependency
            assert {f"artifacts/{up}/{f}" for f in files} <= set(entry["deps"])
        assert f"src/vitnas/stages/{name}.py" in entry["deps"] and "src/vitnas/config.py" in entry["deps"]


@pytest.mark.slow
def test_each_stage_depends_on_the_code_it_imports():
    """dvc.yaml's code deps of a stage cover every vitnas file that importing the stage loads (in a
    fresh interpreter per stage), and lazy imports too; the shared helpers the stages import are
    deps (editing `_inputs.py` reruns slim and retrain); what config imports only to validate is not
    (editing the search does not retrain the supernet)."""
    from vitnas.stages._code_deps import code_deps

    show = ("import sys, vitnas.stages.{}; print('\\n'.join(m.__file__ for m in list(sys.modules.values()) "
            "if m.__name__.split('.')[0] == 'vitnas' and getattr(m, '__file__', None)))")
    procs = {s: subprocess.Popen([sys.executable, "-c", show.format(s)], stdout=subprocess.PIPE, text=True)
             for s in STAGES}
    for stage, proc in procs.items():
        loaded = proc.communicate(timeout=600)[0].split()
        assert proc.returncode == 0 and loaded
        deps = code_deps(stage)
        for f in loaded:
            rel = Path(f).resolve().relative_to(REPO).as_posix()
            assert any(rel == d or rel.startswith(d + "/") for d in deps), (stage, rel)
    for stage in ("supernet", "search", "slim", "retrain"):
        assert "src/vitnas/stages/_inputs.py" in code_deps(stage)
    assert "src/vitnas/stages/_model_log.py" in code_deps("retrain")
    assert "src/vitnas/data" in code_deps("supernet")  # data/stream.py: imported inside a function
    assert not any(d.startswith("src/vitnas/search") for d in code_deps("supernet"))
    assert not any(d.startswith("src/vitnas/supernet") for d in code_deps("data"))


def test_each_kfp_component_takes_what_its_stage_contract_says():
    """A stage's GPU, torchrun, checkpoint and multi-node facts are declared in the contract; its
    component takes the matching arguments (the pipeline derives pod settings from the same facts)."""
    import inspect

    from vitnas.pipeline import components, dag

    for name, s in STAGES.items():
        args = inspect.signature(getattr(components, f"{name}_op").python_func).parameters
        assert ("nproc_per_node" in args) == s.data_parallel, name
        assert ("checkpoint_root" in args) == s.checkpoints, name
        assert ("trainjob" in args) == s.multinode, name
        assert (name in dag.GPU_STAGES) == s.gpu and (name in dag.MULTINODE_STAGES) == s.multinode
    assert all(s.gpu for s in STAGES.values() if s.data_parallel)  # torchrun is for GPUs


def test_supernet_declares_what_it_reads_and_has_its_own_keys():
    s = STAGES["supernet"]
    assert not any(p.startswith("search") for p in s.params)
    assert s.reads("supernet.hierarchical") and s.reads("supernet.bn_calib_images") and s.reads("space.depth")


# ---- every stage reads only what it declares ----------------------------------------------------------
class Recorder:
    """A view of a params model that records each dotted key read (methods and properties run on
    the view, so what they read is recorded too)."""

    def __init__(self, obj: BaseModel, seen: set[str], path: str = "") -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_seen", seen)
        object.__setattr__(self, "_path", path)

    def _key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def __getattr__(self, name: str):
        obj, cls = self._obj, type(self._obj)
        if name in cls.model_fields:
            value = getattr(obj, name)
            if isinstance(value, BaseModel):
                return Recorder(value, self._seen, self._key(name))
            self._seen.add(self._key(name))
            return value
        if name in ("model_dump", "model_dump_json"):
            if self._path:  # a whole section, e.g. for a fingerprint
                self._seen.add(self._path)
            return getattr(obj, name)
        if name == "flat" and not self._path:  # only contract.logged_params, which filters to declared keys
            return obj.flat
        attr = getattr(cls, name)
        if isinstance(attr, property):
            return attr.fget(self)
        if isinstance(attr, types.FunctionType):
            return types.MethodType(attr, self)
        return getattr(obj, name)




def test_the_recorder_sees_reads_through_methods_and_properties():
    seen: set[str] = set()
    r = Recorder(parse_params(TINY), seen)
    r.search_space()
    assert r.slim.target == ("flops", 0.6)
    r.supernet.model_dump()
    assert {"space.embed_dim", "data.img_size", "slim.target_flops_ratio", "supernet"} <= seen
    # retrain declares none of these: the check would fail if it read them
    assert {"data.img_size", "slim.target_flops_ratio", "supernet"} <= set(contract.undeclared("retrain", seen))


@pytest.mark.slow
def test_every_stage_reads_only_the_keys_it_declares(tmp_path, one_thread):
    from vitnas.stages import data, proxy, retrain, search, slim, supernet, transfer

    params = parse_params(TINY)
    a = tmp_path
    calls = {
        "data": lambda p: data.run(p, a / "data"),
        "supernet": lambda p: supernet.run(p, a / "data", a / "supernet", progress=False),
        "proxy": lambda p: proxy.run(p, a / "data", a / "proxy", progress=False),
        "search": lambda p: search.run(p, a / "data", a / "supernet/supernet.pt", a / "search", progress=False),
        "slim": lambda p: slim.run(p, a / "data", a / "supernet/supernet.pt", a / "search/best_arch.json",
                                   a / "slim", progress=False),
        "retrain": lambda p: retrain.run(p, a / "data", a / "supernet/supernet.pt", a / "slim", a / "retrain",
                                         progress=False),
        "transfer": lambda p: transfer.run(p, a / "data", a / "retrain", a / "transfer", progress=False),
    }
    assert list(calls) == list(contract.ORDER)
    for stage, call in calls.items():
        seen: set[str] = set()
        call(Recorder(params, seen))
        assert seen, stage
        assert contract.undeclared(stage, seen) == [], f"{stage} reads keys it does not declare"


# ---- Kubeflow: a step gets only its keys --------------------------------------------------------------
def test_changing_a_key_changes_only_the_inputs_of_the_stages_that_read_it():
    """KFP caches a step by its component and input values: with per-stage params, changing
    retrain.epochs leaves every upstream step's input unchanged (cache hits), and so on."""
    a = parse_params(TINY)
    b = parse_params(json.loads(json.dumps(TINY)) | {"retrain": TINY["retrain"] | {"epochs": 2}})
    changed = {s for s in contract.ORDER if stage_params(a, s) != stage_params(b, s)}
    assert changed == {"retrain"}
    c = parse_params(json.loads(json.dumps(TINY)) | {"supernet": TINY["supernet"] | {"epochs": 2}})
    assert {s for s in contract.ORDER if stage_params(a, s) != stage_params(c, s)} == {"supernet", "search"}


# ---- DVC experiments --------------------------------------------------------------------------------
def _dvc(repo: Path, *args: str) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.slow
def test_dvc_experiments_show_and_diff_every_stage_metric_plot_and_param(tmp_path):
    """The tiny pipeline as a git + DVC project, then two experiments: `dvc exp show` has every
    stage's metrics for each, `dvc plots diff` draws every declared curve for both (their files are
    git's), and `dvc params diff` shows a transfer target's setting as a key of its own."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        base[section] = base.get(section, {}) | values
    base["proxy"]["num_candidates"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(base))

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "ci@vitnas"), git("config", "user.name", "ci")
    _dvc(repo, "init", "-q")
    _dvc(repo, "repro", "-q")
    git("add", "-A")
    git("commit", "-qm", "baseline")
    tracked = git("ls-files").split()
    for f in ["artifacts/supernet/metrics.json", *(f"artifacts/{s.name}/{p.file}" for s in STAGES.values()
                                                   for p in s.plots if p.x is not None)]:
        assert f in tracked  # git sees the metrics and the plotted series
    names = []
    for lr, batch in (("1e-3", 64), ("5e-3", 32)):  # retrain and transfer rerun, the rest is the baseline's
        out = _dvc(repo, "exp", "run", "-S", f"retrain.lr={lr}",
                   "-S", f"transfer.targets.digits-cifar.batch_size={batch}")
        names.append(out.split("Ran experiment(s): ")[1].split()[0])
    shown = json.loads(_dvc(repo, "exp", "show", "--json"))
    metrics = []

    def walk(node):  # every revision (workspace, baseline, experiments) in dvc's nested JSON
        if isinstance(node, dict):
            if isinstance(node.get("data"), dict) and node.get("rev") != "workspace":
                m = node["data"].get("metrics") or {}
                metrics.append({f: v.get("data", {}) for f, v in m.items()})
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(shown)
    complete = [m for m in metrics if {f"artifacts/{s}/metrics.json" for s in STAGES} <= set(m)]
    assert len(complete) >= 3, metrics  # the baseline and both experiments, every stage's metrics
    assert len({m["artifacts/retrain/metrics.json"]["train_loss"] for m in complete}) >= 2
    diff = _dvc(repo, "metrics", "diff", "--json")
    assert json.loads(diff) is not None
    plots = json.loads(_dvc(repo, "plots", "diff", "--json", "--split", *names))
    assert not plots.get("errors"), plots["errors"]
    curves = [p.title for s in STAGES.values() for p in s.plots if p.x is not None]
    for title in curves:  # each curve, drawn with the points of both experiments
        (plot,) = [v for k, v in plots["data"].items() if title in k]
        revs = {d["rev"] for d in plot[0]["anchor_definitions"]["<DVC_METRIC_DATA>"]}
        assert revs == set(names), (title, revs)
    params = json.loads(_dvc(repo, "params", "diff", "--json", names[0], names[1]))["params.yaml"]
    assert params["transfer.targets.digits-cifar.batch_size"] | {"diff": 0} == {"old": 64, "new": 32, "diff": 0}


def test_compiled_pipeline_gives_each_step_only_its_keys(tmp_path, monkeypatch):
    """Compiled twice with another retrain.epochs: every step's task spec is the same, and the init
    step hands the upstream steps byte-identical params, so KFP's cache keys of data, supernet,
    proxy, search and slim do not change; retrain's (and so transfer's, whose input model changes)
    do."""
    from vitnas.pipeline.dag import ClusterOptions, compile_pipeline, pipeline_arguments
    from vitnas.pipeline.runtime import init_pipeline

    monkeypatch.delenv("VITNAS_PIPELINE_RUN_ID", raising=False)
    a = parse_params(TINY)
    b = parse_params(json.loads(json.dumps(TINY)) | {"retrain": TINY["retrain"] | {"epochs": 2}})
    opts = ClusterOptions(image="ghcr.io/vitnas/vitnas:abc1234")
    (ya, *pa), (yb, *pb) = (list(yaml.safe_load_all(compile_pipeline(p, tmp_path / f"{n}.yaml", opts).read_text()))
                            for n, p in (("a", a), ("b", b)))
    assert pa == pb  # the Kubernetes platform spec
    assert ya["components"] == yb["components"] and ya["deploymentSpec"] == yb["deploymentSpec"]
    assert ya["root"]["dag"] == yb["root"]["dag"]
    defaults = {k: (ya["root"]["inputDefinitions"]["parameters"][k].get("defaultValue"),
                    yb["root"]["inputDefinitions"]["parameters"][k].get("defaultValue"))
                for k in ya["root"]["inputDefinitions"]["parameters"]}
    assert [k for k, (x, y) in defaults.items() if x != y] == ["retrain_epochs"]
    for stage in contract.ORDER:  # each step's input is the init output of its own name
        task = ya["root"]["dag"]["tasks"][f"{stage}-op"]
        assert task["inputs"]["parameters"]["params"]["taskOutputParameter"] == {
            "outputParameterKey": stage, "producerTask": "init-op"}
    out_a, out_b = (init_pipeline(args.pop("params_json"), args) for args in map(pipeline_arguments, (a, b)))
    assert {s for s in contract.ORDER if out_a[s] != out_b[s]} == {"retrain"}


def test_the_cli_takes_every_option_the_contract_commands_use():
    import typer

    from vitnas.cli import app

    commands = typer.main.get_command(app).commands
    for name, s in STAGES.items():
        opts = {o for p in commands[name].params for o in p.opts}
        used = {w for w in s.cmd.split() if w.startswith("--")}
        assert used <= opts, f"{name}: {sorted(used - opts)}"
        upstream = {"data": "--data", "supernet": "--supernet", "search": "--arch", "slim": "--arch",
                    "retrain": "--model"}
        assert {upstream[u] for u in s.inputs} <= used, name  # each declared input arrives by an option


def test_the_committed_dvc_lock_is_a_clean_baseline():
    """On a fresh clone `dvc status` lists no stage as changed by code, params or command, and every
    output has a hash in dvc.lock: only the artifacts a clone lacks (DVC's cache) are missing."""
    status = json.loads(_dvc(REPO, "status", "--json"))
    stale = []
    for stage, entries in status.items():
        for e in entries:
            if isinstance(e, str):  # "changed command", "always changed"
                stale.append(f"{stage}: {e}")
                continue
            for kind, items in e.items():
                for path, what in items.items():
                    if kind == "changed deps" and path.startswith("artifacts/"):
                        continue  # an upstream output: checked as that stage's output
                    if kind == "changed outs" and what in ("not in cache", "deleted"):
                        continue  # a clone has no DVC cache; a git-tracked output that differs is "modified"
                    stale.append(f"{stage}: {kind} {path}: {what}")
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    for name, entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        locked = {o["path"]: o for o in lock.get(name, {}).get("outs", [])}
        for out in entry["outs"] + entry["metrics"]:
            path = out if isinstance(out, str) else next(iter(out))
            if "md5" not in locked.get(path, {}):
                stale.append(f"{name}: {path} has no hash in dvc.lock")
    assert not stale, "dvc.lock is stale; commit, then run scripts/refresh-baseline.sh:\n" + "\n".join(stale)


def test_ctrl_c_in_the_demo_puts_back_the_tracked_files_dvc_removed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts/restore-tracked.sh", repo / "scripts")
    (repo / "artifacts/slim").mkdir(parents=True)
    (repo / "artifacts/slim/metrics.json").write_text('{"a": 1}')
    (repo / "artifacts/slim/history.json").write_text("[]")

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.email=ci@vitnas", "-c", "user.name=ci", "commit", "-qm", "baseline")
    (repo / "artifacts/slim/metrics.json").unlink()  # what DVC does before rerunning slim
    (repo / "artifacts/slim/history.json").write_text("[1]")  # written by the interrupted run: kept
    (repo / "artifacts/slim/new.json").write_text("{}")  # untracked: kept
    assert "@scripts/restore-tracked.sh artifacts" in "@" + (REPO / "scripts/demo.sh").read_text().split("trap '")[1]
    subprocess.run(["bash", "scripts/restore-tracked.sh", "artifacts"], cwd=repo, check=True, capture_output=True)
    assert (repo / "artifacts/slim/metrics.json").read_text() == '{"a": 1}'
    assert (repo / "artifacts/slim/history.json").read_text() == "[1]"
    assert (repo / "artifacts/slim/new.json").exists()

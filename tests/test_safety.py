"""Guarantees beyond single bad inputs: interrupted writes, concurrent writers, outputs that describe
one run, and MLflow state that stays consistent with disk."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitnas import tracking
from vitnas.config import parse_params
from vitnas.stages import data as data_stage
from vitnas.stages import proxy as proxy_stage
from vitnas.stages._io import MARKER, check_output, claim_output

pytestmark = pytest.mark.usefixtures("one_thread")


def test_leftovers_of_an_interrupted_write_are_removed_on_the_next_run(tmp_path):
    from vitnas.stages._io import _leftover_tag

    out = tmp_path / "data"
    (tmp_path / ".data.tmp-abc123").mkdir()  # what a run killed inside atomic_dir leaves: tagged
    (tmp_path / ".data.tmp-abc123" / "train.npz").write_bytes(b"half")
    _leftover_tag(tmp_path / ".data.tmp-abc123")
    (tmp_path / ".data.old-deadbeef").mkdir()
    _leftover_tag(tmp_path / ".data.old-deadbeef")
    (tmp_path / ".data.old-mine").mkdir()  # the same pattern, no tag: a user's, left alone
    (tmp_path / "other.tmp-1").write_text("not ours")  # another name: left alone
    data_stage.run(parse_params({}), out, track=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.old-mine", "data", "other.tmp-1"]
    assert json.loads((out / MARKER).read_text())["stage"] == "data"


def test_a_run_killed_while_swapping_leaves_only_tagged_leftovers(tmp_path, monkeypatch):
    """Killed between the two renames of atomic_dir: the old output and the temp dir both carry
    the tag, so the next run removes them."""
    from vitnas.stages import _io

    out = tmp_path / "o"
    with _io.claim_output(out, "data"), _io.atomic_dir(out, "data") as tmp:
        (tmp / "dataset.json").write_text("{}")
    real = os.replace

    def killed(src, dst):
        if Path(dst) == out:  # out -> old happened; temp -> out never does
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(_io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt), _io.claim_output(out, "data"), _io.atomic_dir(out, "data") as tmp:
        (tmp / "dataset.json").write_text("{}")
    monkeypatch.setattr(_io.os, "replace", real)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".o."))
    assert len(left) == 2 and all(_io._is_our_leftover(tmp_path / n) for n in left)
    with _io.claim_output(out, "data"):
        pass
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_a_second_writer_gets_a_one_line_error(tmp_path):
    out = tmp_path / "x"
    with claim_output(out, "data"):
        with pytest.raises(Exception, match=r"x: another vitnas process is writing it") as e:
            with claim_output(out, "data"):
                pass
        assert "\n" not in str(e.value)
    with claim_output(out, "data"):  # released: the next writer gets it, and no lock file is left
        pass
    assert not any(tmp_path.iterdir())


def test_outputs_written_before_markers_are_still_recognised(tmp_path):
    out = tmp_path / "supernet"
    out.mkdir()
    for name in ("supernet.pt", "metrics.json", "history.json", "curves.png"):  # e.g. a `dvc checkout`
        (out / name).write_text("x")
    assert check_output(out, "supernet") == out
    (out / "notes.md").write_text("mine")
    with pytest.raises(Exception, match=r"holds files vitnas did not write \(notes.md\)"):
        check_output(out, "supernet")


def _params(n):
    return parse_params({"tracking": {"enabled": False},
                         "space": {"preset": None, "embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2],
                                   "mlp_ratio": [2.0, 3.0], "head_dim": 8},
                         "proxy": {"num_candidates": n, "proxies": ["dss", "params"], "batch_size": 8},
                         "search": {"population": 10, "parents": 5}})


def test_proxy_outputs_always_describe_one_run(digits_dir, tmp_path, monkeypatch):
    """An interrupted re-run leaves a partial scores.jsonl and no summary of the previous run."""
    out = tmp_path / "p"
    proxy_stage.run(_params(3), digits_dir, out, progress=False)
    assert (out / "top_k.json").exists() and (out / "metrics.json").exists()
    from vitnas.proxies import scorer

    real, calls = scorer.score_candidate, []

    def dies_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scorer, "score_candidate", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        proxy_stage.run(_params(6), digits_dir, out, progress=False)
    assert not (out / "top_k.json").exists() and not (out / "metrics.json").exists()
    assert len((out / "scores.jsonl").read_text().splitlines()) == 4  # 3 before + 1 new
    monkeypatch.setattr(scorer, "score_candidate", real)
    m = proxy_stage.run(_params(6), digits_dir, out, progress=False)
    assert m["num_candidates"] == 6 and m["candidates_scored"] == 2
    assert json.loads((out / "metrics.json").read_text()) == m


# ---- MLflow ------------------------------------------------------------------------------------------
def _first_use(args):
    """A fresh process: stage run on a (possibly new) store, parent by pipeline id."""
    uri, run_id = args
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["VITNAS_PIPELINE_RUN_ID"] = run_id
    from vitnas import tracking as t

    with t.stage_run("data", experiment="concurrent") as r:
        r.log_metrics({"x": 1.0})
    return t.pipeline_parent(run_id, "concurrent")


@pytest.mark.slow
def test_concurrent_first_use_of_a_new_store_and_one_parent(tmp_path):
    """Six processes start together on a new sqlite store: no alembic race, one parent run, settled
    FINISHED by the stages that end together."""
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    with mp.get_context("spawn").Pool(6) as pool:
        parents = pool.map(_first_use, [(uri, "p-1")] * 6)
    assert len(set(parents)) == 1
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert sum(r.data.tags.get(tracking.ROLE_TAG) == "pipeline" for r in runs) == 1
    assert sum(r.data.tags.get(tracking.ROLE_TAG) == "stage" for r in runs) == 6
    assert client.get_run(parents[0]).info.status == "FINISHED"


def test_a_killed_stage_run_is_marked_killed_on_the_next_start(monkeypatch):
    import mlflow

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    mlflow.set_tracking_uri(tracking.tracking_uri())
    exp_id = tracking._experiment_id(mlflow, "stale")
    client = mlflow.MlflowClient()
    host = __import__("socket").gethostname()
    orphan = client.create_run(exp_id, tags={tracking.STAGE_TAG: "supernet", tracking.HOST_TAG: host,
                                             tracking.PID_TAG: dead}).info.run_id
    same_pipeline = client.create_run(exp_id, tags={tracking.STAGE_TAG: "supernet", tracking.PIPELINE_TAG: "run-7",
                                                    tracking.HOST_TAG: "elsewhere", tracking.PID_TAG: "1"}
                                      ).info.run_id
    other_host = client.create_run(exp_id, tags={tracking.STAGE_TAG: "supernet", tracking.HOST_TAG: "elsewhere",
                                                 tracking.PID_TAG: dead}).info.run_id
    monkeypatch.setenv("VITNAS_PIPELINE_RUN_ID", "run-7")
    with tracking.stage_run("supernet", experiment="stale"):
        pass
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(same_pipeline).info.status == "KILLED"
    assert client.get_run(other_host).info.status == "RUNNING"  # may be alive on its own machine

"""Scaling out: data-parallel search and proxy scoring under torchrun (2 gloo processes on CPU),
proxy shards merged, and the same results as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vitnas.config import parse_params
from vitnas.errors import ArtifactError, ConfigError
from vitnas.search import SupernetFitness
from vitnas.stages import _checkpoint
from vitnas.stages import proxy as proxy_stage
from vitnas.stages import search as search_stage

pytestmark = pytest.mark.usefixtures("one_thread")

SEARCH = {"population": 6, "parents": 3, "mutations": 3, "crossovers": 3, "generations": 3, "seed": 3,
          "fitness": "hybrid", "proxy": "dss", "hybrid_ratio": 2}
PROXY = {"num_candidates": 10, "proxies": ["dss", "snip", "dss_rank"], "batch_size": 16, "top_k": 4}


def raw(**sections) -> dict:
    return {"tracking": {"enabled": False}, "search": SEARCH, "proxy": PROXY} | sections


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as one_thread: equal arithmetic in every process
    r = subprocess.run([str(exe), "--standalone", "--nproc_per_node", str(nproc), "-m", "vitnas", *args],
                       capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_search_and_score_as_one(digits_dir, supernet_file, tmp_path, monkeypatch):
    """One torchrun job of 2 processes per stage. Search (hybrid fitness: both the supernet and the
    proxy evaluations are sharded) resumes a 1-process run that was killed in generation 2 and ends
    with the history, best arch and checkpoint of an uninterrupted 1-process run; the proxy stage's
    merged scores.jsonl equals one process's, set-level proxy included."""
    p = parse_params(raw())
    search_stage.run(p, digits_dir, supernet_file, tmp_path / "one", progress=False)

    real, calls = SupernetFitness.__call__, {"n": 0}

    def killed(self, archs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, archs)

    monkeypatch.setattr(SupernetFitness, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        search_stage.run(p, digits_dir, supernet_file, tmp_path / "two", progress=False)
    monkeypatch.setattr(SupernetFitness, "__call__", real)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw()))
    r = torchrun(2, "search", "--params", "p.yaml", "--data", str(digits_dir), "--supernet", str(supernet_file),
                 "--out", "two", "--resume", cwd=tmp_path)
    assert r.stdout.count("search (evolution, fitness hybrid)") == 1  # only rank 0 reports
    one, two = tmp_path / "one", tmp_path / "two"
    assert lines(two / "history.jsonl") == lines(one / "history.jsonl")
    for name in ("best_arch.json", "generations.json"):
        assert (two / name).read_text() == (one / name).read_text()
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert (m1.pop("world_size"), m2.pop("world_size")) == (1, 2)
    m1.pop("seconds"), m2.pop("seconds")
    assert m1 == m2
    s1, s2 = (_checkpoint.load(tmp_path / f"{d}-checkpoints")["search"] for d in ("one", "two"))
    assert s1 == s2  # rng state, caches, counters: the 2-process search is the 1-process search

    proxy_stage.run(p, digits_dir, tmp_path / "proxy1", progress=False)
    torchrun(2, "proxy", "--params", "p.yaml", "--data", str(digits_dir), "--out", "proxy2", cwd=tmp_path)
    assert lines(tmp_path / "proxy2/scores.jsonl") == lines(tmp_path / "proxy1/scores.jsonl")
    assert (tmp_path / "proxy2/top_k.json").read_text() == (tmp_path / "proxy1/top_k.json").read_text()
    assert json.loads((tmp_path / "proxy2/metrics.json").read_text())["world_size"] == 2


def test_proxy_shards_merge_to_one_run(digits_dir, tmp_path):
    """K pods with --shard k/K and a --merge step write what one run writes; a shard made with other
    params, or a missing shard, is refused before anything is written."""
    p = parse_params(raw())
    one = proxy_stage.run(p, digits_dir, tmp_path / "one", progress=False)
    shards = [tmp_path / f"shard{k}" for k in range(3)]
    for k, d in enumerate(shards):
        m = proxy_stage.run(p, digits_dir, d, shard=(k, 3), progress=False)
        assert m["num_candidates"] == len(lines(d / "scores.jsonl")) == len(range(k, 10, 3))
    merged = proxy_stage.run(p, digits_dir, tmp_path / "merged", merge=shards, progress=False)
    for name in ("scores.jsonl", "top_k.json"):
        assert (tmp_path / "merged" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert merged["num_shards"] == 3 and merged["candidates_scored"] == 0
    same = {k for k in one if "seconds" not in k and k != "candidates_scored"}
    assert {k: merged[k] for k in same} == {k: one[k] for k in same}  # best scores, Kendall taus

    with pytest.raises(ArtifactError, match=r"shards hold 7 of 10 candidates"):
        proxy_stage.run(p, digits_dir, tmp_path / "m2", merge=shards[:2] + [shards[0]], progress=False)
    other = parse_params(raw(proxy=PROXY | {"seed": 9}))
    proxy_stage.run(other, digits_dir, tmp_path / "odd", shard=(2, 3), progress=False)
    with pytest.raises(ArtifactError, match=r"odd/.scores.fingerprint: the shard was scored with other params"):
        proxy_stage.run(p, digits_dir, tmp_path / "m3", merge=shards[:2] + [tmp_path / "odd"], progress=False)
    with pytest.raises(ArtifactError, match="not a proxy shard output"):
        proxy_stage.run(p, digits_dir, tmp_path / "m4", merge=[tmp_path / "one"], progress=False)
    assert not any((tmp_path / d).exists() for d in ("m2", "m3", "m4"))
    with pytest.raises(ConfigError, match="--shard 3/3"):
        proxy_stage.run(p, digits_dir, tmp_path / "m5", shard=(3, 3), progress=False)


def test_hierarchical_search_refuses_torchrun(digits_dir, monkeypatch, tmp_path):
    """GLiT's level-2 supernet trains in-process: under torchrun it is refused, not run twice."""
    from vitnas.train.distributed import DistInfo

    monkeypatch.setattr(search_stage, "init_distributed", lambda device: DistInfo(rank=0, world_size=2))
    p = parse_params({"tracking": {"enabled": False}, "space": {"preset": "glit-demo"},
                      "supernet": {"hierarchical": True}, "search": {"strategy": "hierarchical"}})
    with pytest.raises(ConfigError, match="^search.strategy: hierarchical runs in one process"):
        search_stage.run(p, digits_dir, None, tmp_path / "h", progress=False)

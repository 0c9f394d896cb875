"""The proxy stage: contract files, search windows, fail-fast config errors, resume from scores.jsonl."""

from __future__ import annotations

import json

import pytest
import torch

import vitnas
from vitnas import proxies
from vitnas.config import ConfigError, parse_params
from vitnas.proxies import scorer as scorer_module
from vitnas.space import Arch, count_flops, count_params
from vitnas.stages import proxy as stage
from vitnas.stages._io import MARKER

SPACE = {"preset": None, "embed_dim": [16, 32], "depth": [1, 2], "num_heads": [1, 2], "mlp_ratio": [2.0, 3.0],
         "head_dim": 8}  # 40 archs


def params(**proxy_cfg):
    search = {"population": 10, "parents": 5} | proxy_cfg.pop("search", {})  # the space has 40 archs
    cfg = {"num_candidates": 10, "proxies": ["dss", "dss_rank", "params", "flops", "snip", "naswot"],
           "batch_size": 8, "top_k": 4, **proxy_cfg}
    return parse_params({"tracking": {"enabled": False}, "space": SPACE, "proxy": cfg, "search": search})


pytestmark = pytest.mark.usefixtures("one_thread")


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_stage_writes_the_contract(digits_dir, tmp_path):
    p = params()
    out = tmp_path / "proxy"
    metrics = stage.run(p, digits_dir, out, progress=False)
    assert {f.name for f in out.iterdir()} == {"scores.jsonl", "metrics.json", "top_k.json", ".scores.fingerprint",
                                               MARKER}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    recs = lines(out / "scores.jsonl")
    assert len(recs) == 10 and metrics["num_candidates"] == 10 and metrics["candidates_scored"] == 10
    archs = [Arch.from_dict(r["arch"]) for r in recs]
    assert len(set(archs)) == 10
    space = p.search_space(num_classes=10, in_chans=1)
    for r, a in zip(recs, archs, strict=True):
        assert space.contains(a)
        assert r["params"] == count_params(a) and r["flops"] == count_flops(a)
        assert list(r["scores"]) == ["dss", "dss_rank", "params", "flops", "snip", "naswot"]
        assert set(r["terms"]) == {"msa", "mlp"}
        assert r["scores"]["dss"] == pytest.approx(r["terms"]["msa"] + r["terms"]["mlp"])
        assert 0 < r["scores"]["dss_rank"] <= 1
    assert [r["scores"]["dss_rank"] for r in recs] == pytest.approx(proxies.rank_combine([r["terms"] for r in recs]))
    top = json.loads((out / "top_k.json").read_text())
    assert [t["rank"] for t in top] == [1, 2, 3, 4]
    dss = sorted((r["scores"]["dss"] for r in recs), reverse=True)
    assert [t["scores"]["dss"] for t in top] == dss[:4]
    assert metrics["best_dss"] == dss[0] and metrics["best_params"] == max(r["params"] for r in recs)
    assert -1 <= metrics["kendall_tau_dss_params"] <= 1 and "kendall_tau_dss_dss_rank" in metrics
    assert metrics["seconds_per_candidate"] > 0


def test_candidates_respect_the_windows(digits_dir, tmp_path):
    space = params().search_space(num_classes=10, in_chans=1)
    lo, hi = count_params(space.smallest()), count_params(space.largest())
    flo, fhi = count_flops(space.smallest()), count_flops(space.largest())
    window = {"params_min": lo + (hi - lo) * 0.2, "params_max": lo + (hi - lo) * 0.8,
              "flops_max": flo + (fhi - flo) * 0.7}
    p = params(num_candidates=6, proxies=["params", "dss"], search=window)
    stage.run(p, digits_dir, tmp_path / "p", progress=False)
    recs = lines(tmp_path / "p" / "scores.jsonl")
    assert len(recs) == 6
    for r in recs:
        assert window["params_min"] <= r["params"] <= window["params_max"]
        assert r["flops"] <= window["flops_max"]
    assert "terms" in recs[0] and "dss_rank" not in recs[0]["scores"]


def test_impossible_window_fails_fast_with_the_key(digits_dir, tmp_path):
    for window, key in (({"params_max": 1000}, "search.params_max"), ({"params_min": "1G"}, "search.params_min"),
                        ({"flops_max": 10}, "search.flops_max")):
        with pytest.raises(ConfigError) as e:
            stage.run(params(search=window), digits_dir, tmp_path / "x", progress=False)
        msg = str(e.value)
        assert msg.startswith(key + ":") and "\n" not in msg and "range" in msg, msg
    assert not (tmp_path / "x").exists()  # nothing written
    # inside the space's range, but too narrow for the number of candidates
    space = params().search_space(num_classes=10, in_chans=1)
    n = count_params(space.smallest())
    with pytest.raises(ConfigError, match=r"^search\.params_(min|max): only \d+ of"):
        stage.run(params(search={"params_min": n - 1, "params_max": n + 1}), digits_dir, tmp_path / "y",
                  progress=False)
    with pytest.raises(ConfigError, match="proxy.num_candidates: 41 is more than the 40 archs"):
        stage.run(params(num_candidates=41), digits_dir, tmp_path / "z", progress=False)


def test_unknown_proxy_is_a_config_error(digits_dir, tmp_path):
    with pytest.raises(ConfigError, match="proxy.proxies: unknown proxy 'zen'; known: dss, dss_rank, params"):
        stage.run(params(proxies=["dss", "zen"]), digits_dir, tmp_path / "u", progress=False)


def test_resume_scores_only_the_rest(digits_dir, tmp_path, monkeypatch):
    p = params()
    stage.run(p, digits_dir, tmp_path / "full", progress=False)

    real = proxies.score_candidate
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[2].key())
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scorer_module, "score_candidate", counting)
    stop_after = 4
    with pytest.raises(KeyboardInterrupt):
        stage.run(p, digits_dir, tmp_path / "part", progress=False)
    part = tmp_path / "part"
    assert len(lines(part / "scores.jsonl")) == 4  # the finished ones are on disk, nothing else
    assert not (part / "metrics.json").exists() and not (part / "top_k.json").exists()
    first = calls[:4]

    calls.clear()
    stop_after = None
    metrics = stage.run(p, digits_dir, part, progress=False)
    assert len(calls) == 6 and not set(calls) & set(first)  # only the rest was scored
    assert metrics["candidates_scored"] == 6
    assert (part / "scores.jsonl").read_bytes() == (tmp_path / "full" / "scores.jsonl").read_bytes()
    assert (part / "top_k.json").read_bytes() == (tmp_path / "full" / "top_k.json").read_bytes()

    calls.clear()
    stage.run(p, digits_dir, part, progress=False)  # complete: nothing to score
    assert calls == []


def test_torn_last_line_is_rescored(digits_dir, tmp_path):
    p = params(proxies=["dss", "params"], num_candidates=5)
    out = tmp_path / "t"
    stage.run(p, digits_dir, out, progress=False)
    full = (out / "scores.jsonl").read_bytes()
    body = full.splitlines(keepends=True)
    (out / "scores.jsonl").write_bytes(b"".join(body[:3]) + body[3][:25])  # killed mid-write
    m = stage.run(p, digits_dir, out, progress=False)
    assert m["candidates_scored"] == 2
    assert (out / "scores.jsonl").read_bytes() == full


def test_other_params_start_over(digits_dir, tmp_path, capsys):
    out = tmp_path / "o"
    stage.run(params(proxies=["dss"], num_candidates=3), digits_dir, out, progress=False)
    m = stage.run(params(proxies=["dss"], num_candidates=3, seed=1), digits_dir, out, progress=False)
    assert m["candidates_scored"] == 3
    assert "made with other params or inputs; starting over" in capsys.readouterr().out
    assert len(lines(out / "scores.jsonl")) == 3


def test_scores_equal_scoring_the_seeded_supernet_directly(digits_dir, tmp_path):
    p = params(proxies=["dss"], num_candidates=3)
    stage.run(p, digits_dir, tmp_path / "d", progress=False)
    space = p.search_space(num_classes=10, in_chans=1)
    net = stage._scoring_model(space, 0, None, torch.device("cpu"))
    for r in lines(tmp_path / "d" / "scores.jsonl"):
        arch = Arch.from_dict(r["arch"])
        assert r["scores"]["dss"] == proxies.score("dss", net, arch)
        assert r["scores"]["dss"] == pytest.approx(proxies.score("dss", vitnas.extract(net, arch)), rel=1e-4)


def test_stage_logs_metrics_and_artifacts(digits_dir, tmp_path, stage_runs):
    rec = stage_runs
    p = params(proxies=["dss", "params"], num_candidates=3)
    metrics = stage.run(p, digits_dir, tmp_path / "m", track=True, progress=False)
    assert rec.stage == "proxy" and rec.kwargs["enabled"] is True
    assert rec.kwargs["params"]["proxy.num_candidates"] == 3 and "search.params_max" in rec.kwargs["params"]
    assert rec.metrics == [(metrics, None)]
    assert set(rec.artifacts) == {"scores.jsonl", "top_k.json"}


def test_search_proxy_fitness_gives_the_proxy_stage_scores(digits_dir, tmp_path):
    """One scorer: the same arch scores the same in scores.jsonl and in search's proxy fitness."""
    from vitnas.data import PreparedData
    from vitnas.search.fitness import ProxyFitness
    from vitnas.stages.search import proxy_batch

    p = params(proxies=["dss", "snip", "naswot"], num_candidates=4, seed=3)
    stage.run(p, digits_dir, tmp_path / "s", progress=False)
    space = p.search_space(num_classes=10, in_chans=1)
    x, y = proxy_batch(PreparedData(digits_dir), p.proxy.batch_size, p.proxy.seed)
    for name in ("dss", "snip", "naswot"):
        fit = ProxyFitness(name, space, seed=p.proxy.seed, inputs=x, targets=y)
        records = lines(tmp_path / "s" / "scores.jsonl")
        got = fit([Arch.from_dict(r["arch"]) for r in records])
        assert got == [r["scores"][name] for r in records], name

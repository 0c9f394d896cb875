"""The search stage: contract outputs, resume, constraints, fitness kinds, clear errors; latency-table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitnas import Arch, count_flops, count_params
from vitnas.config import parse_params
from vitnas.errors import ArtifactError, ConfigError
from vitnas.search import LatencyTable, SupernetFitness
from vitnas.stages import latency as latency_stage
from vitnas.stages import search as stage
from vitnas.supernet import Supernet

BUDGET = {"population": 6, "parents": 3, "mutations": 3, "crossovers": 3, "generations": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def params(**search):
    return parse_params({"tracking": {"enabled": False}, "search": BUDGET | search})


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_stage_writes_the_contract_and_every_candidate_is_feasible(digits_dir, supernet_file, tmp_path):
    p = params(params_min="30k", params_max="120k", flops_max="2M")
    out = tmp_path / "search"
    metrics = stage.run(p, digits_dir, supernet_file, out, progress=False)
    assert {"best_arch.json", "history.jsonl", "pareto.png", "metrics.json"} <= {f.name for f in out.iterdir()}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    hist = _history(out)
    assert len(hist) == metrics["evaluations"] == metrics["budget"] == 6 + 3 * 6
    for rec in hist:
        arch = Arch.from_dict(rec["arch"])
        assert 30e3 <= count_params(arch) == rec["params"] <= 120e3
        assert count_flops(arch) == rec["flops"] <= 2e6
        assert 0.0 <= rec["fitness"] <= 1.0 and rec["generation"] in range(4)
    assert len({json.dumps(r["arch"]) for r in hist}) == len(hist)
    best = max(hist, key=lambda r: r["fitness"])
    assert json.loads((out / "best_arch.json").read_text()) == best["arch"]
    assert metrics["best_fitness"] == best["fitness"] and metrics["best_params"] == best["params"]
    assert metrics["rejected"] == metrics["rejected_params"] + metrics["rejected_flops"] + \
        metrics["rejected_duplicate"] + metrics["rejected_latency"] > 0
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "search-checkpoints" / "checkpoint.pt").exists()
    # the report: self-contained, every candidate, the selected arch (best_arch.json) highlighted
    report = (out / "report.html").read_text()
    chosen = next(i for i, r in enumerate(hist) if r["arch"] == json.loads((out / "best_arch.json").read_text()))
    assert report.count("<tr id='c") == len(hist) and f"<tr id='c{chosen}' class=sel>" in report
    assert report.count("<svg") == 3 and "selected: #" in report  # params, FLOPs, progress; the star
    assert "src=" not in report and "href" not in report  # nothing fetched from anywhere
    _optuna_dashboard_shows_every_candidate(out / "optuna.db", hist)


def _optuna_dashboard_shows_every_candidate(db: Path, hist: list[dict]) -> None:
    """optuna.db is a study of every evaluated candidate that optuna-dashboard's own API serves."""
    import io
    import wsgiref.util

    import optuna
    from optuna_dashboard import wsgi

    study = optuna.load_study(study_name="vitnas-search", storage=f"sqlite:///{db}")
    assert study.metric_names == ["fitness", "params", "flops"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert [t.values for t in trials] == [[r["fitness"], r["params"], r["flops"]] for r in hist]
    assert [t.user_attrs["generation"] for t in trials] == [r["generation"] for r in hist]
    assert [t.user_attrs["origin"] for t in trials] == [r["origin"] for r in hist]
    for t, r in zip(trials, hist, strict=True):  # each varying gene, a per-layer one per layer
        assert t.params["embed_dim"] == r["arch"]["embed_dim"]
        assert [t.params.get(f"num_heads.{i}") for i in range(r["arch"]["depth"])] == r["arch"]["num_heads"]
        assert f"num_heads.{r['arch']['depth']}" not in t.params and "patch_size" not in t.params  # fixed: no param
    assert {tuple(v) for v in (t.values for t in study.best_trials)}  # a Pareto front
    app = wsgi(optuna.storages.RDBStorage(f"sqlite:///{db}"))
    environ = {"PATH_INFO": f"/api/studies/{study._study_id}", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, h, exc=None: status.append(s)))
    assert status == ["200 OK"]
    served = json.loads(body)
    assert len(served["trials"]) == len(hist) and served["objective_names"] == ["fitness", "params", "flops"]
    assert {p["name"] for p in served["intersection_search_space"]} >= {"embed_dim", "depth"}


def test_resume_after_interruption_equals_uninterrupted(digits_dir, supernet_file, tmp_path, monkeypatch,
                                                       interrupt):
    p = params(strategy="evolution", seed=5)
    stage.run(p, digits_dir, supernet_file, tmp_path / "full", progress=False)
    stage.run(p, digits_dir, supernet_file, tmp_path / "again", progress=False)
    assert _history(tmp_path / "full") == _history(tmp_path / "again")  # seeded runs reproduce

    restore = interrupt(SupernetFitness, "__call__", 3)  # generation 2
    with pytest.raises(KeyboardInterrupt):
        stage.run(p, digits_dir, supernet_file, tmp_path / "part", progress=False)
    assert not (tmp_path / "part").exists()  # nothing half written
    restore()
    real = SupernetFitness.__call__
    counted = {"archs": 0}

    def counting(self, archs):
        counted["archs"] += len(archs)
        return real(self, archs)

    monkeypatch.setattr(SupernetFitness, "__call__", counting)
    stage.run(p, digits_dir, supernet_file, tmp_path / "part", resume=True, progress=False)
    assert counted["archs"] == 2 * 6  # only generations 2 and 3 were evaluated again
    assert _history(tmp_path / "full") == _history(tmp_path / "part")
    assert (tmp_path / "full/best_arch.json").read_text() == (tmp_path / "part/best_arch.json").read_text()


def test_impossible_constraint_fails_before_any_evaluation(digits_dir, supernet_file, tmp_path, monkeypatch):
    def never(self, archs):
        raise AssertionError("evaluated")

    monkeypatch.setattr(SupernetFitness, "__call__", never)
    with pytest.raises(ConfigError, match=r"^search.params_max: 1000 is below the smallest arch in the space "
                                          r"\(14.4k params\); feasible range 14.4k-203k$"):
        stage.run(params(params_max=1000), digits_dir, supernet_file, tmp_path / "s", progress=False)
    with pytest.raises(ConfigError, match=r"^search.latency_table: required when search.latency_max_ms is set$"):
        stage.run(params(latency_max_ms=1.0), digits_dir, supernet_file, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_bad_inputs_are_clear(digits_dir, supernet_file, tmp_path):
    with pytest.raises(ArtifactError, match=r"missing.pt: supernet file not found"):
        stage.run(params(), digits_dir, tmp_path / "missing.pt", tmp_path / "s")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match=r"corrupt.pt: not a readable torch file"):
        stage.run(params(), digits_dir, corrupt, tmp_path / "s")
    other = parse_params({"space": {"embed_dim": [16, 32]}}).search_space(num_classes=10, in_chans=1)
    with pytest.raises(ArtifactError, match=r"other.pt: supernet was trained on another search space \(embed_dim"):
        stage.run(params(), digits_dir, Supernet(other).save(tmp_path / "other.pt"), tmp_path / "s")
    # files named in params.yaml are checked with the params, before any stage starts
    with pytest.raises(ConfigError, match=r"^search.latency_table: .*nope.json: not found"):
        params(latency_table=str(tmp_path / "nope.json"), latency_max_ms=1.0)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match=r"^search.latency_table: .*bad.json: corrupt latency table"):
        params(latency_table=str(bad), latency_max_ms=1.0)
    with pytest.raises(ArtifactError, match=r"dataset.json: not found"):
        stage.run(params(), tmp_path / "nodata", supernet_file, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_latency_table_command_and_latency_budget(digits_dir, supernet_file, tmp_path, capsys):
    table_path = tmp_path / "latency.json"
    m = latency_stage.run(params(), digits_dir, table_path, warmup=1, repeats=3, rounds=1, check_archs=2,
                          progress=False, track=False)
    assert m["entries"] == 3 + 3 * 4 * 3 and "mean_rel_error" in m and m["max_rel_error"] >= m["mean_rel_error"]
    out = capsys.readouterr().out
    assert "mean relative error" in out and "predicted" in out
    table = LatencyTable.load(table_path)
    assert table.device["type"] in ("cpu", "cuda") and len(table.check["archs"]) == 2
    space = params().search_space(num_classes=10, in_chans=1)
    lo, hi = table.range(space)
    budget = lo + (hi - lo) / 3
    metrics = stage.run(params(latency_table=str(table_path), latency_max_ms=budget), digits_dir, supernet_file,
                        tmp_path / "s", progress=False)
    hist = _history(tmp_path / "s")
    assert all(r["latency_ms"] <= budget + 1e-4 for r in hist)
    assert all(abs(r["latency_ms"] - table.predict(Arch.from_dict(r["arch"]))) < 1e-4 for r in hist)
    assert metrics["best_latency_ms"] <= budget + 1e-4
    with pytest.raises(ConfigError, match=r"^search.latency_max_ms: .* below the fastest arch .* feasible range"):
        stage.run(params(latency_table=str(table_path), latency_max_ms=lo / 10), digits_dir, supernet_file,
                  tmp_path / "s2", progress=False)


@pytest.fixture
def fake_proxies(monkeypatch):
    """A cheap, predictable stand-in for the proxy computation behind the shared scorer."""
    from vitnas.proxies import Scored, scorer

    calls = []

    def score_candidate(names, model, arch=None, *, inputs=None, targets=None):
        calls.append((names[0], arch, None if inputs is None else tuple(inputs.shape)))
        return Scored({n: float(sum(h * r for h, r in zip(arch.num_heads, arch.mlp_ratio, strict=True)))
                       for n in names})

    monkeypatch.setattr(scorer, "score_candidate", score_candidate)
    return calls


def test_proxy_and_hybrid_fitness(digits_dir, supernet_file, tmp_path, fake_proxies, monkeypatch):
    m = stage.run(params(fitness="proxy", proxy="synflow"), digits_dir, None, tmp_path / "p", progress=False)
    hist = _history(tmp_path / "p")
    assert len(fake_proxies) == len(hist) == m["evaluations"] and all(c[0] == "synflow" for c in fake_proxies)
    assert fake_proxies[0][2] == (32, 1, 16, 16)  # a fixed batch of train images (params.proxy.batch_size)
    assert all(r["proxy"] == r["fitness"] for r in hist)

    fake_proxies.clear()
    evaluated = []
    real = SupernetFitness.__call__

    def counting(self, archs):
        evaluated.extend(archs)
        return real(self, archs)

    monkeypatch.setattr(SupernetFitness, "__call__", counting)
    m = stage.run(params(fitness="hybrid", hybrid_ratio=3), digits_dir, supernet_file, tmp_path / "h", progress=False)
    hist = _history(tmp_path / "h")
    assert len(evaluated) == len(hist) == m["evaluations"] == 24
    assert len(fake_proxies) == m["proxy_evaluations"] == 3 * 24
    assert all("proxy" in r and 0 <= r["fitness"] <= 1 for r in hist)

    with pytest.raises(ConfigError, match=r"^search.proxy: unknown proxy 'nope'; known: dss, "):
        stage.run(params(fitness="proxy", proxy="nope"), digits_dir, None, tmp_path / "x", progress=False)


def test_real_proxy_registry_end_to_end(digits_dir, supernet_file, tmp_path):
    pytest.importorskip("vitnas.proxies")
    with pytest.raises(ConfigError, match=r"^search.proxy: 'dss_rank' ranks a whole scored set.*use one of dss"):
        stage.run(params(fitness="proxy", proxy="dss_rank"), digits_dir, None, tmp_path / "x", progress=False)
    small = {"population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 1}
    m = stage.run(params(fitness="hybrid", proxy="dss", hybrid_ratio=2, **small), digits_dir, supernet_file,
                  tmp_path / "h", progress=False)
    hist = _history(tmp_path / "h")
    assert m["evaluations"] == len(hist) == 8 and m["proxy_evaluations"] == 16
    assert all(r["proxy"] > 0 for r in hist)  # DSS of a random init is positive


def test_random_strategy_and_tracking(digits_dir, supernet_file, tmp_path, stage_runs):
    rec = stage_runs
    p = parse_params({"search": BUDGET | {"strategy": "random"}})
    m = stage.run(p, digits_dir, supernet_file.parent, tmp_path / "r", progress=False)  # the stage's output dir
    assert m["evaluations"] == 24 and {r["origin"] for r in _history(tmp_path / "r")} == {"random"}
    assert rec.stage == "search" and rec.kwargs["enabled"] is True
    per_gen = [(mm, step) for mm, step in rec.metrics if step is not None]
    assert [step for _, step in per_gen] == [0, 1, 2, 3]
    assert all({"best_fitness", "population_mean_fitness"} <= set(mm) for mm, _ in per_gen)
    assert {"pareto.png", "report.html", "history.jsonl", "best_arch.json"} <= set(rec.artifacts)
    # every candidate as a sortable MLflow table, one row each, with its genes and costs
    table = rec.tables["candidates.json"]
    hist = _history(tmp_path / "r")
    assert table["candidate"] == list(range(24)) and table["fitness"] == [r["fitness"] for r in hist]
    assert table["params"] == [r["params"] for r in hist] and table["generation"] == [r["generation"] for r in hist]
    assert {"origin", "flops", "embed_dim", "depth", "num_heads"} <= set(table)
    assert all(len(v) == 24 for v in table.values())


# ---- GLiT: hierarchical search ------------------------------------------------------------------------
HIER = {"strategy": "hierarchical", "population": 4, "parents": 2, "mutations": 2, "crossovers": 2, "generations": 2,
        "level2_epochs": 1, "bn_calib_images": 64}


def hier_params(**search):
    return parse_params({"tracking": {"enabled": False}, "space": {"preset": "glit-demo"},
                         "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "val_random_subnets": 1,
                                      "hierarchical": True},
                         "search": HIER | search})


@pytest.fixture(scope="module")
def glit_level1_file(tmp_path_factory) -> Path:
    """An untrained level-1 GLiT supernet (what the supernet stage writes with strategy hierarchical)."""
    space = hier_params().search_space(num_classes=10, in_chans=1).level1()
    torch.manual_seed(0)
    return Supernet(space).save(tmp_path_factory.mktemp("glit") / "supernet.pt")


def test_hierarchical_search_writes_both_levels(digits_dir, glit_level1_file, tmp_path, stage_runs):
    rec = stage_runs
    space = hier_params().search_space(num_classes=10, in_chans=1)
    budget = sum(space.level1().cost_range()[2:]) / 2
    out = tmp_path / "search"
    m = stage.run(hier_params(flops_max=budget), digits_dir, glit_level1_file, out, progress=False)
    names = {f.name for f in out.iterdir()}
    assert set(stage.OUTPUTS) | {"level1_arch.json", "level1_pareto.png", stage.LEVEL2_SUPERNET} <= names
    hist = _history(out)
    assert [r["level"] for r in hist] == [1] * 12 + [2] * 12 and m["evaluations"] == 24
    level1 = Arch.load(out / "level1_arch.json")
    space2 = space.level2(level1)
    assert all(space.level1().contains(Arch.from_dict(r["arch"])) for r in hist[:12])
    assert all(space2.contains(Arch.from_dict(r["arch"])) for r in hist[12:])  # the level-1 split, fixed
    assert all(r["flops"] <= budget for r in hist)
    best = max(hist[12:], key=lambda r: r["fitness"])
    assert json.loads((out / "best_arch.json").read_text()) == best["arch"]
    assert m["best_fitness"] == m["level2_best_fitness"] == best["fitness"]
    assert m["level1_best_fitness"] == max(r["fitness"] for r in hist[:12])
    assert 0 <= m["level2_supernet_val_acc_largest"] <= 1 and m["level2_supernet_epochs"] == 1
    net2 = Supernet.load(out / stage.LEVEL2_SUPERNET)
    assert net2.space == space2 and net2.meta["level"] == 2 and net2.meta["split"] == list(level1.local_units)
    logged = {k: step for mm, step in rec.metrics for k in mm}
    assert {"level1_best_fitness", "level2_best_fitness", "level2_supernet_train_loss",
            "level2_supernet_val_acc_largest"} <= set(logged)
    assert rec.stage == "search" and {"level1_arch.json", "level1_pareto.png"} <= set(rec.artifacts)
    # plain evolution over the whole GLiT space works too (BatchNorm recalibrated per candidate)
    full_net = Supernet(space).save(tmp_path / "full.pt")
    m2 = stage.run(parse_params({"tracking": {"enabled": False}, "space": {"preset": "glit-demo"},
                                 "search": BUDGET | {"bn_calib_images": 64}}),
                   digits_dir, full_net, tmp_path / "evo", progress=False)
    assert m2["evaluations"] == 24 and "level" not in _history(tmp_path / "evo")[0]


def test_hierarchical_resume_equals_uninterrupted(digits_dir, glit_level1_file, tmp_path, monkeypatch, interrupt):
    p = hier_params(seed=3)
    stage.run(p, digits_dir, glit_level1_file, tmp_path / "full", progress=False)
    restore = interrupt(SupernetFitness, "__call__", 5)  # level 2, generation 1 (level 1 made 3 calls)
    with pytest.raises(KeyboardInterrupt):
        stage.run(p, digits_dir, glit_level1_file, tmp_path / "part", progress=False)
    assert not (tmp_path / "part").exists()
    restore()
    from vitnas.supernet.trainer import SupernetTrainer

    def no_training(*a, **k):
        raise AssertionError("the level-2 supernet was trained again")

    monkeypatch.setattr(SupernetTrainer, "train_epoch", no_training)
    stage.run(p, digits_dir, glit_level1_file, tmp_path / "part", resume=True, progress=False)
    assert _history(tmp_path / "full") == _history(tmp_path / "part")
    for name in ("best_arch.json", "level1_arch.json"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "part" / name).read_text()


def test_hierarchical_search_needs_the_level1_supernet(digits_dir, tmp_path):
    space = hier_params().search_space(num_classes=10, in_chans=1)
    with pytest.raises(ArtifactError, match=r"supernet was trained on another search space"):
        stage.run(hier_params(), digits_dir, Supernet(space).save(tmp_path / "full.pt"), tmp_path / "s")
    with pytest.raises(ArtifactError, match=r"level-1 supernet file .* is required"):
        stage.run(hier_params(), digits_dir, None, tmp_path / "s")
    assert not (tmp_path / "s").exists()

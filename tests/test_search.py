"""The search library: operators, constraints, evolution state machine, fitness, latency table."""

from __future__ import annotations

import copy
import io
import json
import random

import pytest
import torch

from vitnas import Arch, SearchSpace, count_flops, count_params
from vitnas.errors import ArtifactError, ConfigError
from vitnas.numbers import human
from vitnas.search import (
    CachedFitness,
    Constraints,
    EvolutionConfig,
    LatencyTable,
    ProxyFitness,
    Search,
    SupernetFitness,
    crossover,
    measure_table,
    mutate,
    pareto_front,
)
from vitnas.supernet import Supernet

DEMO = SearchSpace.preset("demo")
TINY = SearchSpace(embed_dim=(16, 32), depth=(1, 2), num_heads=(1, 2), mlp_ratio=(2.0,), head_dim=8, patch_size=4,
                   img_size=8, in_chans=1, num_classes=3, name="tiny")
SMALL = EvolutionConfig(population=10, parents=4, mutations=5, crossovers=5, generations=4)

# A known fitness with one optimum: depth 4, embed 48, these heads / ratios per layer.
TARGET_HEADS, TARGET_RATIOS = (3, 1, 4, 2), (3.0, 2.0, 4.0, 3.0)


def synthetic(arch: Arch) -> float:
    miss = 0.0
    for i in range(4):
        if i < arch.depth:
            miss += abs(arch.num_heads[i] - TARGET_HEADS[i]) + abs(arch.mlp_ratio[i] - TARGET_RATIOS[i])
        else:
            miss += 4.0
    return -(miss + abs(arch.embed_dim - 48) / 16)


class Counting:
    """A fitness that records every batch it is asked to evaluate."""

    kind = "synthetic"

    def __init__(self, fn=synthetic):
        self.fn = fn
        self.calls: list[list[Arch]] = []

    def __call__(self, archs):
        self.calls.append(list(archs))
        return [self.fn(a) for a in archs]

    @property
    def evaluated(self) -> list[Arch]:
        return [a for c in self.calls for a in c]


# ---- operators ---------------------------------------------------------------------------------
def test_mutation_and_crossover_always_give_archs_of_the_space_including_depth_changes():
    rng = random.Random(0)
    grew = shrank = 0
    for _ in range(400):
        a, b = DEMO.sample(rng), DEMO.sample(rng)
        child = mutate(a, DEMO, rng, mutation_prob=0.5, resample_prob=0.9)
        assert DEMO.contains(child), child
        if child.depth > a.depth:
            grew += 1
            assert child.num_heads[:a.depth] != () and len(child.mlp_ratio) == child.depth
        if child.depth < a.depth:
            shrank += 1
        kid = crossover(a, b, DEMO, rng)
        assert DEMO.contains(kid), kid
        assert kid.depth in (a.depth, b.depth) and kid.embed_dim in (a.embed_dim, b.embed_dim)
        for i in range(kid.depth):
            have = [p for p in (a, b) if i < p.depth]
            assert kid.num_heads[i] in [p.num_heads[i] for p in have]
            assert kid.mlp_ratio[i] in [p.mlp_ratio[i] for p in have]
    assert grew > 20 and shrank > 20


def test_mutation_keeps_the_untouched_prefix_and_zero_probs_copy():
    rng = random.Random(1)
    a = DEMO.sample(rng)
    assert mutate(a, DEMO, rng, mutation_prob=0.0, resample_prob=0.0) == a
    for _ in range(100):
        child = mutate(a, DEMO, rng, mutation_prob=0.0, resample_prob=1.0)
        n = min(a.depth, child.depth)
        assert child.num_heads[:n] == a.num_heads[:n] and child.mlp_ratio[:n] == a.mlp_ratio[:n]


def test_pareto_front():
    cost = [1, 2, 3, 4, 5]
    fit = [0.1, 0.5, 0.4, 0.6, 0.6]
    assert pareto_front(cost, fit) == [0, 1, 3]


# ---- the evolution loop ---------------------------------------------------------------------------
def test_constraints_rejected_before_evaluation_and_no_duplicates():
    lo, hi = 40e3, 90e3
    cons = Constraints(params_min=lo, params_max=hi, flops_max=1.5e6)
    fit = Counting()
    s = Search(DEMO, SMALL, fit, constraints=cons).run()
    evaluated = fit.evaluated
    assert evaluated and all(lo <= count_params(a) <= hi and count_flops(a) <= 1.5e6 for a in evaluated)
    assert s.rejected["params"] > 0 and s.rejected["flops"] > 0
    keys = [a.key() for a in evaluated]
    assert len(keys) == len(set(keys)) == len(s.history) == s.evaluations == SMALL.budget
    assert all(DEMO.contains(a) for a in evaluated)
    for rec in s.history:  # records carry the exact costs
        a = Arch.from_dict(rec["arch"])
        assert rec["params"] == count_params(a) and rec["flops"] == count_flops(a)
    assert [r["generation"] for r in s.history] == sorted(r["generation"] for r in s.history)
    assert {r["origin"] for r in s.history} == {"random", "mutation", "crossover"}


def test_duplicates_are_rejected_in_a_tiny_space_with_bounded_retries():
    assert TINY.size() == 2 * (2 + 4)
    fit = Counting(lambda a: float(count_params(a)))
    s = Search(TINY, EvolutionConfig(population=4, parents=2, mutations=3, crossovers=3, generations=5), fit).run()
    keys = [a.key() for a in fit.evaluated]
    assert len(keys) == len(set(keys)) == TINY.size()  # the whole space, each arch once, then it runs dry
    assert s.rejected["duplicate"] > 0 and s.shortfall == s.config.budget - TINY.size()


def test_seeded_runs_are_identical_and_seeds_differ():
    a = Search(DEMO, SMALL, Counting()).run()
    b = Search(DEMO, SMALL, Counting()).run()
    c = Search(DEMO, EvolutionConfig(**{**SMALL.__dict__, "seed": 1}), Counting()).run()
    assert a.history == b.history and a.rejected == b.rejected and a.stats == b.stats
    assert a.history != c.history


def test_resume_from_state_equals_uninterrupted():
    full = Search(DEMO, SMALL, Counting()).run()
    part = Search(DEMO, SMALL, Counting())
    for _ in range(2):
        part.step()
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)  # what the stage checkpoints
    buf.seek(0)
    resumed = Search(DEMO, SMALL, Counting())
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.next_generation == 2
    resumed.run()
    assert resumed.history == full.history and resumed.stats == full.stats and resumed.best() == full.best()
    with pytest.raises(ValueError, match="another config"):
        Search(DEMO, EvolutionConfig(**{**SMALL.__dict__, "seed": 3}), Counting()).load_state_dict(
            copy.deepcopy(part.state_dict()))


def test_random_search_uses_the_same_evaluation_budget():
    evo = Search(DEMO, SMALL, Counting()).run()
    rnd = Search(DEMO, EvolutionConfig(**{**SMALL.__dict__, "strategy": "random"}), Counting()).run()
    assert evo.evaluations == rnd.evaluations == SMALL.budget == 10 + 4 * 10
    assert {r["origin"] for r in rnd.history} == {"random"}
    assert [s["evaluated"] for s in rnd.stats] == [s["evaluated"] for s in evo.stats]


def test_evolution_beats_or_matches_random_on_a_known_fitness():
    cfg = EvolutionConfig(population=20, parents=5, mutations=10, crossovers=10, generations=10)
    for seed in (0, 1, 2):
        evo = Search(DEMO, EvolutionConfig(**{**cfg.__dict__, "seed": seed}), Counting()).run()
        rnd = Search(DEMO, EvolutionConfig(**{**cfg.__dict__, "seed": seed, "strategy": "random"}), Counting()).run()
        assert evo.evaluations == rnd.evaluations
        assert evo.best()["fitness"] >= rnd.best()["fitness"], seed
        # and the population improves over generations, as selection should make it
        assert evo.stats[-1]["population_mean_fitness"] > evo.stats[0]["population_mean_fitness"]
    assert evo.best()["fitness"] > rnd.best()["fitness"]


def test_hybrid_evaluates_only_the_proxy_filtered_subset():
    proxy = Counting(lambda a: -abs(count_params(a) - 60e3))
    fit = Counting()
    cfg = EvolutionConfig(**{**SMALL.__dict__, "hybrid_ratio": 3})
    s = Search(DEMO, cfg, fit, proxy=proxy).run()
    assert len(proxy.calls) == len(fit.calls) == cfg.generations + 1
    for p_batch, f_batch in zip(proxy.calls, fit.calls, strict=True):
        assert len(p_batch) == 3 * len(f_batch)
        scores = [proxy.fn(a) for a in p_batch]
        top = sorted(range(len(p_batch)), key=lambda i: (-scores[i], i))[:len(f_batch)]
        assert f_batch == [p_batch[i] for i in sorted(top)]
    assert s.evaluations == cfg.budget and s.proxy_evaluations == 3 * cfg.budget
    assert all("proxy" in r for r in s.history)
    keys = [a.key() for a in proxy.evaluated]
    assert len(keys) == len(set(keys))  # filtered-out candidates are seen too


# ---- constraints ----------------------------------------------------------------------------------
def test_impossible_constraints_fail_fast_with_the_key_and_the_feasible_range():
    with pytest.raises(ConfigError, match=r"^search.params_max: 1000 is below the smallest arch in the space "
                                          r"\(14.4k params\); feasible range 14.4k-203k$"):
        Constraints(params_max=1000).check_feasible(DEMO)
    with pytest.raises(ConfigError, match=r"^search.params_min: 5000000 is above the largest arch .*203k"):
        Constraints(params_min=5e6).check_feasible(DEMO)
    with pytest.raises(ConfigError, match=r"^search.flops_max: .* below the smallest arch .*feasible range"):
        Constraints(flops_max=10).check_feasible(DEMO)
    # each window alone is reachable, together they are not
    with pytest.raises(ConfigError, match=r"^search.params_min: no arch of the space meets all constraints"):
        Constraints(params_min=150e3, flops_max=count_flops(DEMO.smallest()) * 1.2).check_feasible(DEMO)
    with pytest.raises(ConfigError, match=r"^search.latency_table: required when search.latency_max_ms is set"):
        Constraints(latency_max_ms=1.0)
    Constraints(params_min=20e3, params_max=100e3).check_feasible(DEMO)


def test_human_counts():
    assert [human(v) for v in (999, 14400, 203000, 5.8e6, 999_999, 1.3e9)] == \
        ["999", "14.4k", "203k", "5.8M", "1M", "1.3G"]


# ---- latency table ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_table() -> LatencyTable:
    return measure_table(TINY, warmup=1, repeats=3, rounds=1, check_archs=2)


def test_latency_table_lookups_sum_and_error_report(tiny_table, tmp_path):
    t = tiny_table
    assert set(t.fixed) == {16, 32} and len(t.blocks) == 2 * 2 * 1
    assert all(v > 0 for v in [*t.fixed.values(), *t.blocks.values()])
    arch = Arch.create(embed_dim=32, depth=2, num_heads=[1, 2], mlp_ratio=2.0, head_dim=8, patch_size=4, img_size=8,
                       in_chans=1, num_classes=3)
    assert t.predict(arch) == pytest.approx(t.fixed[32] + t.blocks[(32, 1, 64)] + t.blocks[(32, 2, 64)])
    assert len(t.check["archs"]) == 2 and t.check["mean_rel_error"] >= 0
    assert t.check["max_rel_error"] >= t.check["mean_rel_error"]
    assert t.device["type"] == "cpu" and t.batch_size == 1
    path = t.save(tmp_path / "lat.json")
    back = LatencyTable.load(path)
    assert back.predict(arch) == pytest.approx(t.predict(arch)) and back.check == t.check
    assert back.covers(TINY) is None
    assert "embed_dim 64" in back.covers(SearchSpace(**{**TINY.__dict__, "embed_dim": (16, 64)}))
    assert "num_classes" in back.covers(SearchSpace(**{**TINY.__dict__, "num_classes": 5}))


def test_latency_table_files_fail_clearly(tmp_path):
    with pytest.raises(ArtifactError, match=r"nope.json: latency table not found"):
        LatencyTable.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"bad.json: corrupt latency table \(not valid JSON"):
        LatencyTable.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ArtifactError, match=r"bad.json: not a vitnas latency table"):
        LatencyTable.load(bad)
    bad.write_text(json.dumps({"format": "vitnas-latency/1", "space": {}}))
    with pytest.raises(ArtifactError, match=r"bad.json: malformed latency table"):
        LatencyTable.load(bad)


def test_latency_constraint_and_its_feasible_range(tiny_table):
    t = tiny_table
    lo, hi = t.range(TINY)
    preds = [t.predict(a) for a in (*(TINY.sample(i) for i in range(200)), TINY.smallest(), TINY.largest())]
    assert lo == pytest.approx(min(preds)) and hi == pytest.approx(max(preds))  # TINY.size() == 12: all seen
    with pytest.raises(ConfigError, match=r"^search.latency_max_ms: .* below the fastest arch .* feasible range"):
        Constraints(latency_max_ms=lo / 2, latency=t).check_feasible(TINY)
    budget = (lo + hi) / 2
    fit = Counting(lambda a: float(count_params(a)))
    s = Search(TINY, EvolutionConfig(population=4, parents=2, mutations=2, crossovers=2, generations=2), fit,
               constraints=Constraints(latency_max_ms=budget, latency=t)).run()
    assert all(t.predict(a) <= budget for a in fit.evaluated)
    assert all(r["latency_ms"] <= budget + 1e-4 for r in s.history)


# ---- fitness ----------------------------------------------------------------------------------------
def test_supernet_fitness_is_top1_with_inherited_weights():
    torch.manual_seed(0)
    net = Supernet(TINY)
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,))
    fit = SupernetFitness(net, x, y, batch_size=4)
    a = TINY.largest()
    with torch.no_grad():
        want = (net.eval()(x, a).argmax(1) == y).float().mean().item()
    assert fit([a, TINY.smallest()])[0] == pytest.approx(want)
    cached = CachedFitness(fit)
    cached([a, a, TINY.smallest()])
    assert fit.calls == 2 and len(cached.cache) == 2


def test_proxy_fitness_uses_a_seeded_random_supernet_and_is_order_independent():
    seen = []

    def scorer(name, model, arch=None, *, inputs=None, targets=None):
        seen.append((name, type(model).__name__, inputs is None))
        return float(model.pos_embed.sum()) + torch.rand(()).item() + arch.depth

    a, b = TINY.largest(), TINY.smallest()
    p1 = ProxyFitness("dss", TINY, seed=3, scorer=scorer)
    p2 = ProxyFitness("dss", TINY, seed=3, scorer=scorer)
    assert p1([a, b]) == list(reversed(p2([b, a])))
    assert ProxyFitness("dss", TINY, seed=4, scorer=scorer)([a]) != p1([a])
    assert seen[0] == ("dss", "Supernet", True)

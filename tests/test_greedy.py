"""EfficientFormer's greedy latency-driven slimming (`search.strategy: greedy`): the action order on a
fixed latency table, the MES variant, floors, resume, the config's refusals and the stage."""

from __future__ import annotations

import json
import random

import pytest

import vitnas.search
from vitnas import SearchSpace
from vitnas.config import parse_params
from vitnas.errors import ConfigError
from vitnas.search import Constraints, GreedyConfig, GreedySlimming, LatencyTable
from vitnas.search.greedy import mes
from vitnas.stages import search as stage

# embed (32, 64), depth (1, 2), heads (1, 2), MLP ratio (2, 4): hidden 64/128 at width 32, 128/256 at 64
SPACE = SearchSpace(embed_dim=(32, 64), depth=(1, 2), num_heads=(1, 2), mlp_ratio=(2.0, 4.0), head_dim=16,
                    patch_size=4, img_size=16, in_chans=1, num_classes=10, name="tiny")
BLOCKS = {(64, 2, 256): 3.0, (64, 1, 256): 2.5, (64, 2, 128): 2.0, (64, 1, 128): 1.5,
          (32, 2, 128): 1.5, (32, 1, 128): 1.25, (32, 2, 64): 1.0, (32, 1, 64): 0.75}
TABLE = LatencyTable(space={k: getattr(SPACE, k) for k in ("head_dim", "patch_size", "img_size", "in_chans",
                                                           "num_classes")},
                     batch_size=1, device={"type": "cpu"}, fixed={64: 1.0, 32: 0.5}, blocks=BLOCKS)


def fitness(archs):
    """A fixed accuracy: depth and width cost most, then layer 0's genes, then layer 1's."""
    out = []
    for a in archs:
        f = 0.9 - 0.2 * (a.depth < 2) - 0.3 * (a.embed_dim < 64)
        f -= 0.01 * (a.num_heads[0] < 2) + 0.025 * (a.mlp_ratio[0] < 4)
        if a.depth == 2:
            f -= 0.005 * (a.num_heads[1] < 2) + 0.012 * (a.mlp_ratio[1] < 4)
        out.append(f)
    return out


def greedy(budget_ms=5.0, **kw):
    return GreedySlimming(SPACE, GreedyConfig(**kw), fitness, constraints=Constraints(latency_max_ms=budget_ms,
                                                                                      latency=TABLE))


def test_actions_taken_in_order_of_fitness_drop_per_ms_saved():
    # step 1 from 7.0 ms: drop per ms saved = depth .2/3, embed .3/3.5, layer 0 heads .01/.5 and mlp .025/1,
    # layer 1 heads .005/.5 = .01 (least), layer 1 mlp .012/1; step 2 from 6.5 ms: layer 1 mlp .012/1 is least
    # (layer 0: .02, .025; depth .195/2.5; embed .3/3.25); step 3 from 5.5 ms: layer 0 heads .02 (5.0 ms, met)
    s = greedy().run()
    path = [(r["origin"], r["latency_ms"]) for r in s.population()]
    assert path == [("largest", 7.0), ("layer 1 num_heads 2->1", 6.5), ("layer 1 mlp_ratio 4->2", 5.5),
                    ("layer 0 num_heads 2->1", 5.0)]
    assert s.best_arch().num_heads == (1, 1) and s.best_arch().mlp_ratio == (4.0, 2.0)
    assert s.best()["latency_ms"] <= 5.0 and s.done
    # every action of every step is recorded, each distinct arch evaluated once (depth 2->1 gives the same
    # arch at steps 1 and 2, and at 2 and 3), and the chosen one had the least drop per ms
    assert len(s.history) == 1 + 6 + 5 + 4
    assert s.evaluations == len({json.dumps(r["arch"]) for r in s.history}) == 14
    for g in range(1, 4):
        step = [r for r in s.history if r["generation"] == g]
        before = s.population()[g - 1]
        drops = [(before["fitness"] - r["fitness"]) / (before["latency_ms"] - r["latency_ms"]) for r in step]
        assert [r["chosen"] for r in step] == [d == min(drops) for d in drops]


def test_a_looser_budget_stops_earlier_and_bad_budgets_are_refused():
    assert greedy(budget_ms=6.6).run().best()["origin"] == "layer 1 num_heads 2->1"
    assert greedy(budget_ms=7.0).run().best()["origin"] == "largest"
    with pytest.raises(ConfigError, match=r"^search\.params_min: the largest arch of the space is below it"):
        GreedySlimming(SPACE, GreedyConfig(), fitness,
                       constraints=Constraints(params_min=1e9, latency_max_ms=5.0, latency=TABLE)).run()
    with pytest.raises(ConfigError, match=r"^search\.latency_max_ms: the greedy strategy slims .* until a budget"):
        GreedySlimming(SPACE, GreedyConfig(), fitness, constraints=Constraints(params_min=1))


def test_mes_takes_the_least_drop_per_score_gained_and_floors_hold():
    s = greedy(budget_ms=3.0, score="mes", mes_alpha=0.7).run()
    for g in range(1, len(s.population())):
        step = [r for r in s.history if r["generation"] == g]
        before = s.population()[g - 1]

        def score(r, before=before):
            gain = mes(_costs(r), 0.7) - mes(_costs(before), 0.7)
            return (before["fitness"] - r["fitness"]) / gain

        assert all(mes(_costs(r), 0.7) > mes(_costs(before), 0.7) for r in step)
        assert [r["chosen"] for r in step] == [score(r) == min(map(score, step)) for r in step]
    assert s.best()["latency_ms"] <= 3.0
    # a params floor: no chosen arch goes below it, and actions that would are counted, not evaluated
    largest = s.population()[0]["params"]
    floor = largest * 0.6
    f = GreedySlimming(SPACE, GreedyConfig(), fitness,
                       constraints=Constraints(params_min=floor, latency_max_ms=5.0, latency=TABLE)).run()
    assert all(r["params"] >= floor for r in f.history) and f.rejected["floor"] > 0


def _costs(r):
    from vitnas.search import Costs

    return Costs(r["params"], r["flops"], r["latency_ms"])


def test_resumed_search_equals_uninterrupted():
    full = greedy().run()
    part = greedy()
    part.step(), part.step()
    again = greedy()
    again.load_state_dict(json.loads(json.dumps(part.state_dict())))
    again.run()
    assert again.history == full.history and again.stats == full.stats
    with pytest.raises(ValueError, match="another config"):
        greedy(score="mes").load_state_dict(part.state_dict())


@pytest.mark.parametrize("preset", ["mnist28", "glit-demo"])
def test_shrink_actions_stay_in_the_space_and_change_one_thing(preset):
    space = SearchSpace.preset(preset)
    rng = random.Random(0)
    for arch in [space.largest(), *(space.sample(rng) for _ in range(20))]:
        actions = space.family.shrink_actions(space, arch)
        for name, new in actions:
            assert space.contains(new), name
            before, after = arch.to_dict(), new.to_dict()
            changed = {k for k in before if before[k] != after[k]}
            if space.family.derives_heads:
                changed -= {"num_heads", "head_dim"}
            if name.startswith("depth"):  # the last blocks go, the others keep their genes
                assert all(after[k] == before[k][:new.depth] for k in changed - {"depth"}), name
            else:
                assert len(changed) == 1 and changed <= {"embed_dim", *space.family.shrink_genes}, name
        assert len({n for n, _ in actions}) == len(actions)
    assert space.family.shrink_actions(space, space.smallest()) == []


def test_config_refusals():
    def check(**search):
        return parse_params({"search": search})

    check(strategy="greedy", flops_max="1M")
    for search, match in (
        ({"strategy": "greedy"}, r"^search\.latency_max_ms: the greedy strategy"),
        ({"strategy": "greedy", "flops_max": "1M", "fitness": "hybrid"}, r"^search\.fitness: hybrid"),
        ({"greedy_score": "mes"}, r"^search\.greedy_score: only used with search\.strategy: greedy"),
        ({"strategy": "greedy", "flops_max": "1M", "greedy_score": "mes"}, r"^search\.latency_max_ms: required with"),
    ):
        with pytest.raises(ConfigError, match=match):
            check(**search)


def test_search_package_names_are_lazy_and_listed():
    assert vitnas.search.__all__ == sorted(vitnas.search._HOME)
    assert all(getattr(vitnas.search, n) is not None for n in vitnas.search.__all__)


def test_stage_runs_greedy_to_a_flops_budget(digits_dir, supernet_file, tmp_path, one_thread):
    p = parse_params({"tracking": {"enabled": False}, "search": {"strategy": "greedy", "flops_max": "1.2M"}})
    out = tmp_path / "search"
    metrics = stage.run(p, digits_dir, supernet_file, out, progress=False)
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    chosen = [r for r in hist if r["chosen"]]
    assert chosen[0]["origin"] == "largest" and chosen[-1]["flops"] <= 1.2e6
    assert all(r["flops"] > 1.2e6 for r in chosen[:-1])  # it stops at the first arch within the budget
    assert [r["flops"] for r in chosen] == sorted((r["flops"] for r in chosen), reverse=True)
    assert json.loads((out / "best_arch.json").read_text()) == chosen[-1]["arch"]
    assert metrics["best_flops"] == chosen[-1]["flops"]
    assert metrics["evaluations"] == len({json.dumps(r["arch"]) for r in hist})
    assert metrics["generations"] == len(chosen) - 1

"""GLiT global-local blocks: archs, exact costs, spaces, the supernet's slicing, BatchNorm
recalibration, evolution operators, and the clear rejections elsewhere."""

from __future__ import annotations

import copy
import itertools
import json
import random

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import vitnas
from vitnas import Arch, ArchError, SearchSpace, Supernet, build, count_flops, count_params, extract
from vitnas.config import parse_params
from vitnas.errors import ConfigError
from vitnas.families import glit
from vitnas.models.build import GlitBlock, LocalUnits
from vitnas.search import Constraints, EvolutionConfig, Search, SupernetFitness, crossover, mutate
from vitnas.supernet import arch_views, init_from_timm, recalibrate_bn
from vitnas.supernet.trainer import SupernetTrainer
from vitnas.train import DistInfo

pytestmark = pytest.mark.usefixtures("one_thread")

DEMO = SearchSpace.preset("glit-demo")
TINY = SearchSpace.preset("glit-tiny")
# Every gene of every branch free, two embed widths, 3 units of 8/16 channels.
FULL = SearchSpace(embed_dim=(24, 48), depth=(1, 2, 3), mlp_ratio=(1.0, 2.0), units=3, qkv_ratio=(0.5, 1.0, 2.0),
                   kernel_size=(3, 5), local_expansion=(1.0, 2.0), glit_grid="full", patch_size=4, img_size=16,
                   in_chans=2, num_classes=5, name="full")


def _glit(local, *, embed=48, ev=1.0, k=3, ec=2.0, mlp=2.0, **kw) -> Arch:
    args = dict(embed_dim=embed, depth=len(local), units=3, local_units=local, qkv_ratio=ev, kernel_size=k,
                local_expansion=ec, mlp_ratio=mlp, patch_size=4, img_size=16, in_chans=1, num_classes=10)
    return Arch.create(**(args | kw))


# ---- the arch value ------------------------------------------------------------------------------------
def test_glit_arch_is_canonical_json_and_keeps_plain_fields_meaningful(tmp_path):
    a = _glit([0, 3, 1], ev=[0.5, 2.0, 1.0], k=[5, 7, 3], ec=[1.0, 2.0, 2.0])
    assert (a.family.name == "glit") and a.num_heads == (3, 0, 2) and a.head_dim == (8, 0, 16)
    assert a.qkv_ratio == (0.5, 0.0, 1.0) and a.kernel_size == (0, 7, 3) and a.local_expansion == (0.0, 2.0, 2.0)
    assert [a.attn_dim(i) for i in range(3)] == [48, 0, 32] and [glit.local_dim(a, i) for i in range(3)] == [0, 48, 16]
    assert [glit.local_hidden(a, i) for i in range(3)] == [0, 96, 32] and a.qkv_dim == (24, 0, 32)
    d = json.loads(a.to_json())
    assert d["num_heads"] == [3, 0, 2] and d["units"] == 3 and d["kernel_size"] == [0, 7, 3]
    assert Arch.from_dict(d) == a and Arch.from_dict({k: v for k, v in d.items() if k != "num_heads"}) == a
    (tmp_path / "arch.json").write_text(a.to_json())
    assert Arch.load(tmp_path / "arch.json") == a
    # the irrelevant settings do not make two equal models differ
    assert _glit([0, 3, 1], ev=[0.5, 9.0, 1.0], k=[99, 7, 3], ec=[5.0, 2.0, 2.0]).key() == a.key()
    assert a.replace(img_size=32).num_patches == 64
    assert a.replace(embed_dim=96).head_dim == (16, 0, 32)  # head dims follow the new unit width
    plain = Arch.published("deit-tiny")
    assert not (plain.family.name == "glit") and "units" not in plain.to_dict() and len(json.loads(plain.key())) == 10


@pytest.mark.parametrize("change, key", [
    ({"local_units": [0, 4, 1]}, "local_units[1]"),
    ({"kernel_size": 4}, "kernel_size[1]"),
    ({"embed_dim": 50}, "embed_dim"),
    ({"num_heads": [3, 3, 2]}, "num_heads"),
    ({"head_dim": [32, 0, 16]}, "head_dim[0]"),
    ({"ev": 0.3}, "qkv_ratio[0]"),
    ({"keep_tokens": [8, 8, 8]}, "keep_tokens"),
])
def test_bad_glit_arch_names_its_key(change, key):
    with pytest.raises(ArchError) as e:
        _glit([0, 3, 1], ev=change.pop("ev", 1.0), **change)
    assert str(e.value).startswith(key), str(e.value)


def test_glit_fields_need_units_and_their_settings():
    with pytest.raises(ArchError, match="^units: required with local_units"):
        Arch.create(embed_dim=48, depth=1, num_heads=1, mlp_ratio=2.0, local_units=[1])
    with pytest.raises(ArchError, match="^kernel_size: missing"):
        Arch.create(embed_dim=48, depth=1, units=3, local_units=[1], qkv_ratio=1.0, local_expansion=1.0,
                    mlp_ratio=2.0)
    a = Arch.create(embed_dim=48, depth=1, units=3, local_units=[0], qkv_ratio=1.0, mlp_ratio=2.0)  # no local
    assert a.kernel_size == (0,) and a.local_expansion == (0.0,)


# ---- GLiT-Tiny as published -------------------------------------------------------------------------------
def test_published_glit_tiny():
    a = Arch.published("glit-tiny")
    assert (a.embed_dim, a.depth, a.units, a.img_size, a.patch_size, a.num_classes) == (192, 12, 3, 224, 16, 1000)
    assert a.num_heads == (3, 0, 1, 3, 0, 1, 3, 1, 0, 3, 0, 3)  # GLiT's own encoding of the block types
    assert a.kernel_size == (0, 31, 31, 0, 45, 31, 0, 31, 45, 0, 31, 0)
    assert a.local_expansion == (0, 2, 4, 0, 4, 4, 0, 4, 4, 0, 4, 0)
    assert a.qkv_ratio == (0.5, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 2)
    assert a.mlp_ratio == (4, 4, 6, 4, 4, 6, 2, 2, 4, 4, 4, 6)
    assert TINY.contains(a)
    # 7.26M params (paper: 7.2-7.3M); 1.47 GMACs, 1.33 by GLiT's counter (GLU projection at half)
    assert count_params(a) == 7_264_456 and 7.2e6 <= count_params(a) <= 7.3e6
    assert count_flops(a) == 1_472_873_280
    assert round(glit.FAMILY.paper_flops(a) / 1e9, 2) == 1.33
    with torch.device("meta"):
        model = build(a)
    assert sum(p.numel() for p in model.parameters()) == count_params(a)


# ---- exact costs and the built model ---------------------------------------------------------------------
def _measured(arch: Arch) -> tuple[int, int]:
    with torch.device("meta"):
        model = build(arch)
        x = torch.empty(1, arch.in_chans, arch.img_size, arch.img_size)
    params = sum(p.numel() for p in model.parameters())
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return params, counter.get_total_flops() // 2


def test_params_and_flops_are_exact():
    rng = random.Random(0)
    archs = [DEMO.sample(rng) for _ in range(25)] + [FULL.sample(rng) for _ in range(25)]
    archs += [DEMO.smallest(), DEMO.largest(), FULL.largest(by="flops"), Arch.published("glit-tiny")]
    archs += [TINY.sample(rng) for _ in range(2)]
    for arch in archs:
        assert (count_params(arch), count_flops(arch)) == _measured(arch), arch


def test_build_gives_timm_vit_with_glit_blocks():
    a = _glit([0, 3, 1, 2], k=[3, 5, 7, 3])
    model = vitnas.build(a).eval()
    assert isinstance(model, VisionTransformer) and all(isinstance(b, GlitBlock) for b in model.blocks)
    b0, b1, b2 = model.blocks[0], model.blocks[1], model.blocks[2]
    assert b0.local is None and b0.attn.num_heads == 3 and b0.attn.qkv.in_features == 48
    assert b1.attn is None and isinstance(b1.local, LocalUnits) and b1.local.dw.kernel_size == (5,)
    assert b2.attn.qkv.weight.shape == (3 * 2 * 16, 32) and b2.attn.proj.weight.shape == (32, 32)
    assert b2.local.pw1.weight.shape == (2 * 32, 16) and b2.local.pw2.weight.shape == (16, 32)
    assert "blocks.1.local.bn.running_mean" in model.state_dict()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert model.forward_features(x).shape == (2, 17, 48)
    # the local branch sees the token sequence: moving one token changes its neighbours' outputs
    local = LocalUnits(4, 4, 3).eval()
    t = torch.randn(1, 6, 4)
    t2 = t.clone()
    t2[0, 0] += 1.0
    with torch.no_grad():
        diff = (local(t) - local(t2)).abs().sum(-1)[0]
    assert diff[0] > 0 and diff[1] > 0 and diff[2:].max() == 0  # kernel 3: only tokens 0 and 1 see token 0


# ---- spaces --------------------------------------------------------------------------------------------
def test_paper_grid_per_block_type():
    # all-global: e_v x FFN; all-local: kernel x e_c with FFN fixed at 4; mixed: e_c x FFN with e_v 1, kernel 31
    assert len(glit.layer_options(TINY, 0)) == len(glit.layer_options(TINY, 3)) == len(glit.layer_options(TINY, 1)) == 9
    assert {(o[1], o[2]) for o in glit.layer_options(TINY, 0)} == {(0, 0.0)}
    assert {o[3] for o in glit.layer_options(TINY, 3)} == {4.0} and {o[0] for o in glit.layer_options(TINY, 3)} == {0.0}
    assert {(o[0], o[1]) for o in glit.layer_options(TINY, 2)} == {(1.0, 31)}
    assert TINY.size() == 36**12 and round(TINY.log10_size(), 1) == 18.7
    assert len(glit.layer_options(FULL, 1)) == 3 * 2 * 2 * 2 and len(glit.layer_options(FULL, 3)) == 2 * 2 * 2


def test_spaces_sample_contain_round_trip_and_bound_costs_exactly():
    for space in (DEMO, TINY, FULL):
        rng = random.Random(1)
        samples = [space.sample(rng) for _ in range(40)]
        assert all(space.contains(a) for a in samples) and len({a.key() for a in samples}) > 30
        assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
        assert not SearchSpace.preset("demo").contains(samples[0]) and not space.contains(Arch.published("deit-tiny"))
    small = SearchSpace(embed_dim=(24, 48), depth=(1, 2), mlp_ratio=(1.0, 2.0), units=3, local_units=(0, 2, 3),
                        qkv_ratio=(0.5, 2.0), kernel_size=(3, 7), local_expansion=(1.0, 2.0), glit_grid="full",
                        patch_size=4, img_size=8, in_chans=1, num_classes=3)
    every = [glit.arch(small, e, layers) for d in small.depth for e in small.embed_dim
             for layers in itertools.product(*(glit.block_options(small, i) for i in range(d)))]
    assert len(every) == small.size() == len({a.key() for a in every})
    p, f = [count_params(a) for a in every], [count_flops(a) for a in every]
    assert small.cost_range() == (min(p), max(p), min(f), max(f))
    assert count_params(small.smallest()) == min(p) and count_params(small.largest()) == max(p)


def test_levels_of_the_hierarchical_search():
    l1 = DEMO.level1()
    assert (l1.qkv_ratio, l1.kernel_size, l1.local_expansion, l1.mlp_ratio) == ((1.0,), (5,), (2.0,), (4.0,))
    assert l1.size() == 4**3 + 4**4 and all(DEMO.contains(l1.sample(s)) for s in range(20))
    best = l1.sample(3)
    l2 = DEMO.level2(best)
    assert l2.split == best.local_units and l2.depth == (best.depth,) and l2.contains(best)
    rng = random.Random(0)
    assert all(l2.sample(rng).local_units == best.local_units for _ in range(30))
    assert l2.size() == __import__("math").prod(len(glit.layer_options(DEMO, n)) for n in best.local_units)
    with pytest.raises(ArchError, match="^split: the level-1 space"):
        l2.level1()
    with pytest.raises(ArchError, match="^units: level1 needs a GLiT space"):
        SearchSpace.preset("demo").level1()


@pytest.mark.parametrize("kwargs, key", [
    ({"num_heads": (1, 2)}, "num_heads"),
    ({"kernel_size": (4,)}, "kernel_size"),
    ({"local_units": (0, 4)}, "local_units"),
    ({"embed_dim": (40,)}, "embed_dim"),
    ({"split": (0, 1)}, "split"),
    ({"glit_grid": "half"}, "glit_grid"),
])
def test_bad_glit_space_names_its_key(kwargs, key):
    with pytest.raises(ArchError) as e:
        SearchSpace(**{**DEMO.__dict__, **kwargs})
    assert str(e.value).startswith(key), str(e.value)


# ---- the supernet ------------------------------------------------------------------------------------
def _trained_like(net: Supernet, seed: int = 0) -> Supernet:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


def _images(space: SearchSpace, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, space.in_chans, space.img_size, space.img_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("space", [DEMO, FULL], ids=["glit-demo", "full"])
def test_extracted_subnet_equals_supernet_with_recalibrated_bn(space):
    torch.manual_seed(0)
    net = _trained_like(Supernet(space))
    x, calib = _images(space, 3), _images(space, 24, seed=1)
    rng = random.Random(0)
    for arch in [space.sample(rng) for _ in range(12)] + [space.largest(), space.smallest(by="flops")]:
        n_bn = recalibrate_bn(net, calib, arch, batch_size=8)
        assert n_bn == sum(b.local is not None for b in net.blocks) and net.training  # modes restored
        model = extract(net, arch).eval()
        assert sum(p.numel() for p in model.parameters()) == count_params(arch)
        with torch.no_grad():
            diff = (net.eval()(x, arch) - model(x)).abs().max().item()
        assert diff <= 1e-5, f"{arch}: {diff}"
        # the standalone model calibrated on the same batches gets the same statistics
        twin = build(arch)
        twin.load_state_dict(model.state_dict())
        recalibrate_bn(twin, calib, batch_size=8)
        for (k, v), w in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
            assert torch.allclose(v.float(), w.float(), atol=1e-5), k
        net.train()


def test_bn_recalibration_is_per_subnet_and_extract_can_do_it():
    torch.manual_seed(0)
    net = _trained_like(Supernet(DEMO))
    calib, x = _images(DEMO, 32, seed=2), _images(DEMO, 4)
    a = glit.arch(DEMO, 48, [(3, 0.0, 5, 2.0, 4.0)] * 3)
    b = glit.arch(DEMO, 48, [(1, 1.0, 5, 2.0, 4.0)] * 3)
    recalibrate_bn(net, calib, a)
    stats_a = net.blocks[0].local.bn.running_mean[:96].clone()
    recalibrate_bn(net, calib, b)
    assert not torch.allclose(net.blocks[0].local.bn.running_mean[:32], stats_a[:32])  # another subnet's stats
    net.eval()
    with torch.no_grad():
        stale = net(x, a)
        model = extract(net, a, calibrate=calib).eval()  # calibrates the supernet for `a` first
        assert not torch.allclose(stale, net(x, a))
        assert (model(x) - net(x, a)).abs().max() <= 1e-5
    assert recalibrate_bn(vitnas.build(Arch.published("deit-tiny", img_size=32, patch_size=16)), calib) == 0


def test_gradients_reach_exactly_the_used_slices_of_both_glu_halves_and_the_centre_taps():
    torch.manual_seed(0)
    net = Supernet(DEMO)
    arch = glit.arch(DEMO, 48, [(2, 1.0, 5, 1.0, 2.0), (1, 1.0, 5, 2.0, 4.0), (3, 0.0, 3, 2.0, 4.0)])
    assert DEMO.contains(arch)
    net(_images(DEMO, 2), arch).square().sum().backward()
    lo = net.blocks[0].local  # 2 local units of 16 channels, e_c 1: 32 hidden, kernel 5 of 7
    assert lo.pw1.weight.shape == (2, 96, 48) and lo.dw.weight.shape == (96, 1, 7)
    want = torch.zeros_like(lo.pw1.weight, dtype=torch.bool)
    want[:, :32, 16:] = True  # value AND gate rows, the last 32 input channels (the ones it reads)
    assert torch.equal(lo.pw1.weight.grad != 0, want)
    assert torch.equal(lo.pw1.bias.grad != 0, want[:, :, -1])
    taps = torch.zeros_like(lo.dw.weight, dtype=torch.bool)
    taps[:32, :, 1:6] = True  # the centre 5 of 7
    assert torch.equal(lo.dw.weight.grad != 0, taps)
    w2 = torch.zeros_like(lo.pw2.weight, dtype=torch.bool)
    w2[16:, :32] = True
    assert torch.equal(lo.pw2.weight.grad != 0, w2)
    at = net.blocks[1].attn  # 2 heads of head dim 16 on the first 32 channels
    assert at.qkv.weight.shape == (3, 3, 32, 48)
    used = torch.zeros_like(at.qkv.weight, dtype=torch.bool)
    used[:, :2, :16, :32] = True
    assert torch.equal(at.qkv.weight.grad != 0, used)
    assert torch.equal(at.qkv.bias.grad != 0, used[..., 0])
    assert net.blocks[2].attn.qkv.weight.grad is None  # an all-local block runs no attention


def test_gradients_equal_those_of_the_extracted_model():
    torch.manual_seed(1)
    net = _trained_like(Supernet(FULL))
    arch = glit.arch(FULL, 48, [(1, 2.0, 5, 2.0, 1.0), (2, 0.5, 3, 1.0, 2.0), (0, 1.0, 0, 0.0, 2.0)])
    x = _images(FULL, 4)
    model = extract(net, arch)
    torch.manual_seed(5)
    net(x, arch).square().sum().backward()
    torch.manual_seed(5)
    model(x).square().sum().backward()
    g = copy.deepcopy(net)
    with torch.no_grad():
        for pg, p in zip(g.parameters(), net.parameters(), strict=True):
            pg.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    ours = arch_views(g, arch)
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name].reshape(-1), p.grad.reshape(-1), atol=1e-5), name


def test_supernet_sizes_blocks_for_their_split_and_round_trips(tmp_path):
    l2 = DEMO.level2(glit.arch(DEMO, 48, [(0, 1.0, 0, 0.0, 2.0), (3, 0.0, 5, 1.0, 4.0), (1, 1.0, 5, 2.0, 2.0)]))
    net = Supernet(l2)
    assert net.blocks[0].local is None and net.blocks[1].attn is None
    assert net.blocks[2].attn.qkv.weight.shape == (3, 2, 32, 32) and net.blocks[2].local.pw1.weight.shape == (2, 32, 16)
    path = _trained_like(net).save(tmp_path / "s.pt")
    back = Supernet.load(path)
    assert back.space == l2
    x, arch = _images(DEMO, 2), l2.sample(0)
    recalibrate_bn(net, _images(DEMO, 8), arch)
    back.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(net.eval()(x, arch), back.eval()(x, arch))
    with pytest.raises(ArchError, match=r"local_units\[0\] 1 not in \[0\]"):
        net.check_arch(glit.arch(DEMO, 48, [(1, 1.0, 5, 2.0, 2.0)] * 3))
    with pytest.raises(ArchError, match="no GLiT local units"):
        net.check_arch(SearchSpace.preset("demo").sample(0))
    with pytest.raises(ArchError, match="has GLiT local units"):
        Supernet(SearchSpace.preset("demo")).check_arch(DEMO.sample(0))


def test_fitness_and_validation_recalibrate_bn():
    torch.manual_seed(0)
    net = _trained_like(Supernet(DEMO))
    x, y = _images(DEMO, 20), torch.randint(0, 10, (20,))
    calib = _images(DEMO, 16, seed=3)
    with pytest.raises(ValueError, match="calib_images"):
        SupernetFitness(net, x, y)
    fit = SupernetFitness(net, x, y, batch_size=8, calib_images=calib)
    archs = [DEMO.sample(s) for s in range(4)]
    got = fit(archs)
    for arch, acc in zip(archs, got, strict=True):
        recalibrate_bn(net, calib, arch, batch_size=8)
        with torch.no_grad():
            assert acc == pytest.approx((net.eval()(x, arch).argmax(1) == y).float().mean().item())
    assert fit(archs) == got  # deterministic: statistics come from fixed images, not from what ran before
    trainer = SupernetTrainer(net, dist=DistInfo(), epochs=1, steps_per_epoch=1, lr=1e-3, min_lr=1e-5,
                              weight_decay=0.05, warmup_epochs=0, mixup=0, cutmix=0, label_smoothing=0.1,
                              ema_decay=None, amp=False)
    with pytest.raises(ValueError, match="calib"):
        trainer.validate(lambda: [(x, y)], {"a": archs[0]})
    assert trainer.validate(lambda: [(x, y)], {"a": archs[0]}, calib)["a"] == got[0]


# ---- search -------------------------------------------------------------------------------------------
def test_mutation_and_crossover_stay_in_glit_spaces():
    rng = random.Random(0)
    split = DEMO.level2(DEMO.sample(2))
    for space in (DEMO, FULL, split):
        moved = 0
        for _ in range(150):
            a, b = space.sample(rng), space.sample(rng)
            child = mutate(a, space, rng, mutation_prob=0.5, resample_prob=0.5)
            assert space.contains(child), child
            moved += child != a
            kid = crossover(a, b, space, rng)
            assert space.contains(kid)
            la, lb, lk = glit.layers(a), glit.layers(b), glit.layers(kid)
            assert all(lk[i] in [p[i] for p in (la, lb) if i < len(p)] for i in range(kid.depth))  # whole blocks
        assert moved > 100
        assert mutate(a, space, rng, mutation_prob=0.0, resample_prob=0.0) == a
    assert all(mutate(split.sample(rng), split, rng, 1.0, 1.0).local_units == split.split for _ in range(20))


def test_evolution_in_a_glit_space_under_a_flops_budget():
    budget = (DEMO.cost_range()[2] + DEMO.cost_range()[3]) / 2

    def fitness(archs):  # prefers local units and big kernels: a known optimum to find
        return [sum(a.local_units) + sum(a.kernel_size) / 10 for a in archs]

    fitness.kind = "synthetic"
    cfg = EvolutionConfig(population=12, parents=4, mutations=6, crossovers=6, generations=6)
    evo = Search(DEMO, cfg, fitness, constraints=Constraints(flops_max=budget)).run()
    rnd = Search(DEMO, EvolutionConfig(**{**cfg.__dict__, "strategy": "random"}), fitness,
                 constraints=Constraints(flops_max=budget)).run()
    assert all(r["flops"] <= budget for r in evo.history) and evo.evaluations == cfg.budget
    assert evo.best()["fitness"] >= rnd.best()["fitness"]
    with pytest.raises(ConfigError, match="flops_max: 10 is below the smallest arch"):
        Constraints(flops_max=10).check_feasible(DEMO)


def test_config_accepts_glit_and_refuses_what_does_not_combine():
    p = parse_params({"space": {"preset": "glit-demo", "kernel_size": [3, 5]}, "search": {"strategy": "hierarchical"},
                      "supernet": {"hierarchical": True}})
    assert p.search_space().kernel_size == (3, 5) and p.search.bn_calib_images == 256
    for raw, msg in [({"search": {"strategy": "hierarchical"}}, "^search.strategy: 'hierarchical'"),
                     ({"space": {"preset": "glit-demo"}, "search": {"fitness": "hybrid"}}, "^search.fitness"),
                     ({"space": {"preset": "glit-demo", "num_heads": [1]}}, "^space.num_heads"),
                     ({"space": {"preset": "demo", "kernel_size": [3]}}, "^space.units: required"),
                     ({"search": {"level2_epochs": 2}}, "^search.level2_epochs"),
                     ({"space": {"preset": "glit-demo"}, "search": {"strategy": "hierarchical"}},
                      "^supernet.hierarchical: must be true"),
                     ({"space": {"preset": "glit-demo"}, "supernet": {"hierarchical": True}},
                      "^supernet.hierarchical: only used")]:
        with pytest.raises(ConfigError, match=msg):
            parse_params(raw)


# ---- what does not support local units says so --------------------------------------------------------
def test_clear_rejections_where_local_units_are_not_supported():
    arch = DEMO.sample(0)
    model = build(arch)
    net = Supernet(DEMO)
    from vitnas.proxies import score
    from vitnas.search import LatencyTable
    from vitnas.slim import MaskedViT

    for args in ((model,), (net, arch)):
        with pytest.raises(ValueError, match="GLiT local units are not supported by the zero-cost proxies"):
            score("dss", *args)
    with pytest.raises(ArchError, match="GLiT local units cannot be slimmed"):
        MaskedViT(model, arch)
    with pytest.raises(ValueError, match="GLiT"):
        init_from_timm(net, VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=48,
                                              depth=3, num_heads=3))
    table = LatencyTable(space={}, batch_size=1, device={}, fixed={}, blocks={})
    assert "GLiT" in table.covers(DEMO) and "GLiT" in table.missing(arch)


def test_supernet_stage_trains_the_level1_space_for_the_hierarchical_search(digits_dir, tmp_path):
    from vitnas.stages import supernet as stage

    p = parse_params({"tracking": {"enabled": False}, "space": {"preset": "glit-demo"},
                      "supernet": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "val_random_subnets": 1,
                                   "hierarchical": True, "bn_calib_images": 64},
                      "search": {"strategy": "hierarchical"}})
    m = stage.run(p, digits_dir, tmp_path / "sn", progress=False, device="cpu")
    net = Supernet.load(tmp_path / "sn" / "supernet.pt")
    want = p.search_space(num_classes=10, in_chans=1).level1()
    assert net.space == want and net.meta["level"] == 1
    assert 0.0 <= m["val_acc_largest"] <= 1.0 and m["params_largest"] == count_params(want.largest())

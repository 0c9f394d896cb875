"""The model-variant fields (global_pool, rel_pos, rel_pos_clip, norm_eps) through every path:
arch files, counts, build, supernet == extract, relative position == AutoFormer's formula, proxies,
slimming, latency tables, pretrained init and params.yaml."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import vitnas
from vitnas import Arch, SearchSpace, count_params, proxies
from vitnas.config import parse_params
from vitnas.errors import ConfigError
from vitnas.models.relpos import RelPosTables, rel_pos_attention
from vitnas.space.arch import ArchError

AF = {"global_pool": "avg", "rel_pos": True, "rel_pos_clip": 2, "norm_eps": 1e-5}
PER_CANDIDATE = [n for n in proxies.names() if not proxies.is_set_level(n)]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def space():
    """The demo space as AutoFormer's model (clip 2 on the 4x4 grid, so clipping happens)."""
    return SearchSpace.preset("demo", **AF)


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    net = vitnas.Supernet(space).eval()
    with torch.no_grad():  # non-zero biases and tables of a trained-looking size
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def autoformer_attention(q, k, v, rk, rv, scale, grid):
    """AutoFormer's relative-position attention written out (the N x N x d gather of its code)."""
    n, c = q.shape[2] - 1, rk.clip
    t = torch.arange(n)
    dv = F.pad(((t[None] // grid) - (t[:, None] // grid)).clamp(-c, c) + c + 1, (1, 0, 1, 0))
    dh = F.pad(((t[None] % grid) - (t[:, None] % grid)).clamp(-c, c) + c + 1, (1, 0, 1, 0))
    r_k, r_v = rk.table_v[dv] + rk.table_h[dh], rv.table_v[dv] + rv.table_h[dh]
    attn = ((q @ k.transpose(-2, -1)) + torch.einsum("bhid,ijd->bhij", q, r_k)) * scale
    attn = attn.softmax(-1)
    return attn @ v + torch.einsum("bhij,ijd->bhid", attn, r_v)


@pytest.mark.parametrize("grid,clip", [(4, 14), (5, 2), (3, 1)])
def test_relative_position_equals_autoformers_formula_values_and_gradients(grid, clip):
    torch.manual_seed(grid)
    B, H, D = 2, 3, 8
    rk, rv = RelPosTables(D, clip), RelPosTables(D, clip)
    with torch.no_grad():
        for p in (*rk.parameters(), *rv.parameters()):
            p.normal_()
    q, k, v = (torch.randn(B, H, grid * grid + 1, D, requires_grad=True) for _ in range(3))
    ours = rel_pos_attention(q, k, v, rk, rv, scale=D ** -0.5, grid=grid)
    ref = autoformer_attention(q, k, v, rk, rv, D ** -0.5, grid)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(ref)
    inputs = [q, k, v, *rk.parameters(), *rv.parameters()]
    for a, b in zip(torch.autograd.grad((ours * w).sum(), inputs), torch.autograd.grad((ref * w).sum(), inputs),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not CLS"):
        rel_pos_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], rk, rv, scale=1.0, grid=grid)


def test_arch_fields_validate_round_trip_and_key():
    base = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, head_dim=16, patch_size=4, img_size=16)
    a = Arch.create(**base, **AF)
    d = json.loads(a.to_json())
    assert {k: d[k] for k in AF} == AF and Arch.from_dict(d) == a
    plain = Arch.create(**base)
    assert plain.to_dict()["global_pool"] == "token" and "rel_pos_clip" not in plain.to_dict()
    old = {k: v for k, v in plain.to_dict().items() if k not in ("global_pool", "rel_pos", "norm_eps")}
    assert Arch.from_dict(old) == plain  # arch.json files from before these fields
    assert plain.key() == json.dumps([32, 2, [2, 2], [64, 64], [16, 16], 4, 16, 3, 1000, None])
    assert len({a.key(), plain.key(), plain.replace(global_pool="avg").key()}) == 3
    assert "pool=avg, rel_pos=2, eps=1e-05" in str(a)
    for bad, msg in [({"global_pool": "max"}, "global_pool"), ({"rel_pos": 1}, "rel_pos"),
                     ({"rel_pos": True, "rel_pos_clip": 0}, "rel_pos_clip"), ({"norm_eps": 0}, "norm_eps"),
                     ({"norm_eps": float("nan")}, "norm_eps"),
                     ({"rel_pos": True, "keep_tokens": [8, 4]}, "keep_tokens")]:
        with pytest.raises(ArchError, match=msg):
            Arch.create(**base, **bad)
    with pytest.raises(ArchError, match="rel_pos: relative position is AutoFormer's"):
        SearchSpace.preset("glit-demo", rel_pos=True)


def test_build_counts_and_pooling(space):
    for arch in [space.smallest(), space.largest(), space.sample(3)]:
        model = vitnas.build(arch).eval()
        assert sum(p.numel() for p in model.parameters()) == count_params(arch)
        assert model.norm.eps == 1e-5 and model.blocks[0].norm1.eps == 1e-5
        x = torch.randn(3, 1, 16, 16)
        feats = model.forward_features(x)  # after the final norm
        torch.testing.assert_close(model(x), model.head(feats[:, 1:].mean(1)))
    tables = 4 * (2 * 2 + 2) * 16  # per layer: key/value x vertical/horizontal x 6 rows x head dim 16
    arch = space.largest()
    assert count_params(arch) - count_params(arch.replace(rel_pos=False)) == tables * arch.depth


def test_supernet_equals_extract_and_survives_save_and_load(space, supernet, tmp_path):
    x = torch.randn(4, 1, 16, 16)
    loaded = vitnas.Supernet.load(supernet.save(tmp_path / "s.pt")).eval()
    assert loaded.space == space
    with torch.no_grad():
        for seed in range(6):
            arch = space.sample(seed)
            torch.testing.assert_close(supernet(x, arch), vitnas.extract(supernet, arch).eval()(x), rtol=0, atol=1e-6)
            torch.testing.assert_close(loaded(x, arch), supernet(x, arch), rtol=0, atol=0)
    with pytest.raises(ArchError, match="global_pool token != the space's avg"):
        supernet.check_arch(SearchSpace.preset("demo").sample(0))


def test_proxies_through_the_supernet_equal_the_extracted_model(space, supernet):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16, generator=g), torch.arange(8) % 10
    for arch in (space.largest(), space.sample(1)):
        a = proxies.score_many(PER_CANDIDATE, supernet, arch, x, y)
        b = proxies.score_many(PER_CANDIDATE, vitnas.extract(supernet, arch), None, x, y)
        for name in PER_CANDIDATE:
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-9), name
        assert a["params"] == count_params(arch)


def test_slimming_folds_exactly_by_whole_heads_and_refuses_tokens(space, supernet):
    from vitnas.slim import MaskedViT, prune, solve_budget

    arch = space.largest()
    masked = MaskedViT(vitnas.extract(supernet, arch), arch).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for m in masked.mask_parameters():
            m.uniform_(0, 1)
    plan = solve_budget(arch, masked.scores(), ratio=0.35)
    assert plan.arch.head_dim == arch.head_dim and sum(plan.arch.num_heads) < sum(arch.num_heads)
    masked.apply_plan(plan)
    pruned = prune(masked, plan).eval()
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(pruned(x), masked(x), rtol=0, atol=1e-5)
    assert pruned.blocks[0].attn.rel_pos_k.table_v.shape == (6, 16)
    with pytest.raises(ArchError, match="slim.tokens"):
        MaskedViT(vitnas.extract(supernet, arch), arch, tokens=True)


def test_latency_tables_and_pretrained_init_know_the_variant(space, supernet):
    from vitnas.search.latency import measure_table
    from vitnas.supernet import init_from_timm

    table = measure_table(space, warmup=0, repeats=1, rounds=1, check_archs=1)
    assert table.covers(space) is None
    assert "rel_pos" in table.covers(SearchSpace.preset("demo", global_pool="avg", norm_eps=1e-5))
    net = vitnas.Supernet(space)
    before = net.blocks[0].attn.rel_pos_k.table_v.detach().clone()
    donor = vitnas.build(space.largest().replace(rel_pos=False))  # a plain ViT: the tables stay
    init_from_timm(net, donor)
    assert torch.equal(net.blocks[0].attn.rel_pos_k.table_v, before)
    init_from_timm(net, vitnas.extract(supernet, space.largest()))  # a vitnas model with tables: copied
    assert torch.equal(net.blocks[0].attn.rel_pos_k.table_v, supernet.blocks[0].attn.rel_pos_k.table_v)


def test_params_yaml_sets_the_variant_and_checks_it():
    p = parse_params({"space": {"global_pool": "avg", "rel_pos": True, "rel_pos_clip": 2, "norm_eps": 1e-5}})
    assert p.search_space(num_classes=10, in_chans=1).model_fields() == AF
    af = parse_params({"space": {"preset": "autoformer-tiny"}, "data": {"img_size": 224}, "proxy": {}})
    assert af.search_space(num_classes=10, in_chans=3).model_fields() == {**AF, "rel_pos_clip": 14}
    for bad in ({"global_pool": "max"}, {"rel_pos": "yes"}, {"rel_pos_clip": 0}, {"norm_eps": 2}):
        with pytest.raises(ConfigError, match=f"space.{next(iter(bad))}"):
            parse_params({"space": bad})
    with pytest.raises(ConfigError, match="space.rel_pos"):
        parse_params({"space": {"preset": "glit-demo", "rel_pos": True}})


def test_glit_spaces_honour_pooling_and_eps():
    space = SearchSpace.preset("glit-demo", global_pool="avg", norm_eps=1e-5)
    torch.manual_seed(0)
    net = vitnas.Supernet(space).eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        for seed in range(3):
            arch = space.sample(seed)
            assert arch.global_pool == "avg" and arch.norm_eps == 1e-5
            model = vitnas.extract(net, arch).eval()
            assert sum(p.numel() for p in model.parameters()) == count_params(arch)
            torch.testing.assert_close(net(x, arch), model(x), rtol=0, atol=1e-5)

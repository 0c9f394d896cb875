"""Zero-cost proxies: DSS exactly as TF-TAS defines it, through the supernet or standalone, and the baselines."""

from __future__ import annotations

import math

import pytest
import torch

import vitnas
from vitnas import proxies
from vitnas.proxies import ProxyError

PER_CANDIDATE = [n for n in proxies.names() if not proxies.is_set_level(n)]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def space():
    return vitnas.SearchSpace.preset("demo")


@pytest.fixture(scope="module")
def supernet(space):
    torch.manual_seed(0)
    return vitnas.Supernet(space)


@pytest.fixture(scope="module")
def archs(space):
    # smallest and largest (full-width slices are views, not copies), plus random mixed ones
    return [space.smallest(), space.largest()] + [space.sample(s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def batch(space):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, space.in_chans, space.img_size, space.img_size, generator=g)
    return x, torch.arange(8) % space.num_classes


def direct_dss(model) -> float:
    """DSS written out from the paper on a standalone timm ViT, one nuclear norm at a time."""
    model.zero_grad(set_to_none=True)
    x = torch.ones(1, *model.patch_embed.proj.weight.shape[1:2], *model.patch_embed.img_size)
    model.eval()
    model(x).sum().backward()
    total = 0.0
    for blk in model.blocks:
        for lin in (blk.attn.qkv, blk.attn.proj):
            total += float(torch.linalg.matrix_norm(lin.weight.grad.double(), ord="nuc")
                           * torch.linalg.matrix_norm(lin.weight.detach().double(), ord="nuc"))
        for lin in (blk.mlp.fc1, blk.mlp.fc2):
            total += float((lin.weight.detach().double() * lin.weight.grad.double()).abs().sum())
    model.zero_grad(set_to_none=True)
    return total


def test_registry_lists_the_proxies():
    assert proxies.names()[:2] == ["dss", "dss_rank"]
    for name in ("params", "flops", "grad_norm", "snip", "grasp", "synflow", "jacob_cov", "naswot", "fisher"):
        assert name in proxies.names()
    assert proxies.needs_data("snip") and not proxies.needs_data("dss") and not proxies.needs_data("synflow")
    with pytest.raises(ProxyError, match="unknown proxy 'nope'; known: dss, dss_rank"):
        proxies.score("nope", vitnas.build(vitnas.SearchSpace.preset("demo").smallest()))


def test_every_dss_term_is_nonzero(supernet, archs):
    for arch in archs:
        t = proxies.dss_terms(supernet, arch)
        for kind in ("qkv", "proj", "fc1", "fc2", "msa", "mlp"):
            assert len(t[kind]) == arch.depth
            assert all(v > 0 and math.isfinite(v) for v in t[kind]), (kind, arch)
        assert t["msa"] == pytest.approx([a + b for a, b in zip(t["qkv"], t["proj"], strict=True)])
        assert t["dss"] == pytest.approx(sum(t["msa"]) + sum(t["mlp"]))
        assert t["dss"] == pytest.approx(t["msa_total"] + t["mlp_total"])


def test_supernet_path_equals_extracted_subnet(supernet, archs):
    for arch in archs:
        through = proxies.dss_terms(supernet, arch)
        alone = proxies.dss_terms(vitnas.extract(supernet, arch))
        for kind in ("qkv", "proj", "fc1", "fc2"):
            assert through[kind] == pytest.approx(alone[kind], rel=1e-4), (kind, arch)
        assert proxies.score("dss", supernet, arch) == pytest.approx(alone["dss"], rel=1e-4)


def test_all_proxies_agree_between_supernet_and_extracted(supernet, archs, batch):
    x, y = batch
    for arch in archs[1:3]:
        a = proxies.score_many(PER_CANDIDATE, supernet, arch, x, y)
        b = proxies.score_many(PER_CANDIDATE, vitnas.extract(supernet, arch), None, x, y)
        assert list(a) == PER_CANDIDATE
        for name in PER_CANDIDATE:
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-9), name


def test_dss_matches_a_direct_computation(space):
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = vitnas.build(space.sample(seed + 10))
        assert proxies.score("dss", model) == pytest.approx(direct_dss(model), rel=1e-4)


def test_dss_ignores_data_and_scoring_order(supernet, space, archs):
    target = archs[2]
    ref = proxies.score("dss", supernet, target)
    x1 = torch.randn(4, space.in_chans, space.img_size, space.img_size)
    x2 = torch.rand(4, space.in_chans, space.img_size, space.img_size) * 5
    assert proxies.score("dss", supernet, target, inputs=x1) == ref
    assert proxies.score("dss", supernet, target, inputs=x2, targets=torch.zeros(4, dtype=torch.long)) == ref
    others = [space.sample(s) for s in range(20, 26)]
    for order in (others, others[::-1], others[::2] + others[1::2]):
        for arch in order:
            proxies.score("dss", supernet, arch)
        assert proxies.score("dss", supernet, target) == ref
    assert all(p.grad is None for p in supernet.parameters())  # nothing accumulates between candidates


def test_scoring_restores_mode_and_never_writes_grads(space):
    torch.manual_seed(0)
    net = vitnas.Supernet(space, drop_path_rate=0.2).train()
    arch = space.sample(5)
    a = proxies.score("dss", net, arch)
    assert net.training and all(m.training for m in net.modules())
    assert proxies.score("dss", net, arch) == a  # eval mode while scoring: drop path off, deterministic
    assert all(p.grad is None for p in net.parameters())


def test_every_proxy_is_finite_on_the_demo_space(supernet, space, batch):
    x, y = batch
    for seed in range(3):
        arch = space.sample(100 + seed)
        through = proxies.score_many(PER_CANDIDATE, supernet, arch, x, y)
        torch.manual_seed(seed)
        alone = proxies.score_many(PER_CANDIDATE, vitnas.build(arch), arch, x, y)
        for scores in (through, alone):
            assert set(scores) == set(PER_CANDIDATE)
            for name, v in scores.items():
                assert isinstance(v, float) and math.isfinite(v), (name, v)
        assert through["params"] == vitnas.count_params(arch)
        assert through["flops"] == vitnas.count_flops(arch)


def test_score_many_shares_passes_but_matches_single_scores(supernet, archs, batch):
    x, y = batch
    arch = archs[3]
    many = proxies.score_many(PER_CANDIDATE, supernet, arch, x, y)
    for name in PER_CANDIDATE:
        assert proxies.score(name, supernet, arch, inputs=x, targets=y) == pytest.approx(many[name], rel=1e-6), name


def test_naswot_reads_gelu_codes(supernet, space, archs):
    """NASWOT must see the GELU units: distinct images give distinct codes (finite, positive log-det),
    identical images collapse the kernel to rank one (only finite because of the regulariser)."""
    x = torch.randn(6, space.in_chans, space.img_size, space.img_size)
    distinct = proxies.score("naswot", supernet, archs[1], inputs=x)
    same = proxies.score("naswot", supernet, archs[1], inputs=x[:1].expand(6, -1, -1, -1).clone())
    assert math.isfinite(distinct) and math.isfinite(same) and distinct > same + 10


def test_data_proxies_need_data(supernet, archs):
    with pytest.raises(ProxyError, match="snip: needs inputs"):
        proxies.score("snip", supernet, archs[0])
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ProxyError, match="grasp: needs targets"):
        proxies.score("grasp", supernet, archs[0], inputs=x)
    assert math.isfinite(proxies.score("jacob_cov", supernet, archs[0], inputs=x))
    with pytest.raises(ProxyError, match="arch: required"):
        proxies.score("dss", supernet)


def test_dss_rank_is_set_level(supernet, archs):
    with pytest.raises(ProxyError, match="whole scored set"):
        proxies.score("dss_rank", supernet, archs[0])
    with pytest.raises(ProxyError, match="whole scored set"):
        proxies.score_many(["dss", "dss_rank"], supernet, archs[0])
    res = proxies.score_candidate(["dss_rank", "params"], supernet, archs[0])
    assert set(res.scores) == {"params"}
    t = proxies.dss_terms(supernet, archs[0])
    assert res.terms == pytest.approx({"msa": t["msa_total"], "mlp": t["mlp_total"]})


def test_rank_combine():
    terms = [{"msa": 10.0, "mlp": 1.0}, {"msa": 1000.0, "mlp": 0.1}, {"msa": 20.0, "mlp": 3.0},
             {"msa": [5.0, 5.0], "mlp": [0.5, 0.5]}]
    s = proxies.rank_combine(terms)
    assert len(s) == 4 and all(0 < v <= 1 for v in s)
    # raw sum would put candidate 1 first by far; by ranks, candidate 2 (2nd msa, best mlp) wins
    assert max(range(4), key=s.__getitem__) == 2
    assert s[0] == s[3]  # per-layer lists are summed: candidate 3 ties candidate 0 on both terms
    # monotone in each term: raising one candidate's term never lowers its score
    for key in ("msa", "mlp"):
        for i in range(4):
            for factor in (1.5, 10.0, 1e6):
                bumped = [dict(t) for t in terms]
                v = bumped[i][key]
                bumped[i][key] = (sum(v) if isinstance(v, list) else v) * factor
                assert proxies.rank_combine(bumped)[i] >= s[i]
    # dominating on both terms means a strictly higher score
    assert proxies.rank_combine([{"msa": 2, "mlp": 2}, {"msa": 1, "mlp": 1}]) == [1.0, 0.5]
    assert proxies.rank_combine([]) == []
    with pytest.raises(ProxyError):
        proxies.rank_combine([{"msa": 1.0}])


def test_synflow_restores_weights_exactly(supernet, space, archs):
    before = {k: (v.data_ptr(), v.dtype, v.clone()) for k, v in supernet.state_dict().items()}
    s = proxies.score("synflow", supernet, archs[2])
    assert math.isfinite(s) and s > 0
    for k, v in supernet.state_dict().items():
        ptr, dtype, old = before[k]
        assert v.data_ptr() == ptr and v.dtype == dtype and torch.equal(v, old), k
    model = vitnas.build(archs[2])
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    proxies.score("synflow", model)
    assert all(torch.equal(v, sd[k]) and v.dtype == torch.float32 for k, v in model.state_dict().items())


def test_nuclear_norms_match_torch():
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(24, 8, generator=g), torch.randn(8, 24, generator=g), torch.randn(24, 8, generator=g),
            torch.randn(5, 5, generator=g),
            # nearly rank one, like DSS gradients with the all-ones input
            torch.outer(torch.randn(30, generator=g), torch.randn(12, generator=g)) * 300
            + 1e-3 * torch.randn(30, 12, generator=g)]
    got = proxies.nuclear_norms(mats)
    want = torch.stack([torch.linalg.matrix_norm(m.double(), ord="nuc") for m in mats])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_weight_norm_cache_follows_weight_changes(space):
    torch.manual_seed(3)
    net = vitnas.Supernet(space)
    arch = space.sample(7)
    before = proxies.score("dss", net, arch)
    with torch.no_grad():
        net.blocks[0].attn.qkv.weight.data.mul_(2.0)  # through .data: no version bump
    after = proxies.score("dss", net, arch)
    assert after != before
    assert after == pytest.approx(proxies.score("dss", vitnas.extract(net, arch)), rel=1e-4)

"""ViT-Slim library: masks, nested token removal, the budget solver, physical pruning, files."""

from __future__ import annotations

import random

import pytest
import torch

from vitnas import Arch, build, count_flops, count_params
from vitnas.errors import ArtifactError
from vitnas.slim import BudgetError, BudgetSolver, MaskedViT, SlimTrainer, load_model, prune, save_model, solve_budget
from vitnas.slim.budget import token_plan

ARCH = Arch.create(embed_dim=32, depth=3, num_heads=[4, 2, 3], head_dim=16, mlp_hidden=[96, 64, 128],
                   patch_size=4, img_size=16, in_chans=1, num_classes=10)


def _model(arch: Arch = ARCH, seed: int = 0):
    torch.manual_seed(seed)
    model = build(arch).eval()
    with torch.no_grad():  # timm inits biases to 0: make them non-trivial so folding is really tested
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _random_masks(masked: MaskedViT, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, m in enumerate(masked.attn_masks):  # per-layer scale so global ranking differs per layer
            m.copy_(torch.rand(m.shape, generator=g) * (0.5 + i))
        for i, m in enumerate(masked.mlp_masks):
            m.copy_(torch.rand(m.shape, generator=g) * (1.5 - 0.3 * i))


def _x(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


# ---- masks ------------------------------------------------------------------------------------
def test_masks_at_one_reproduce_the_unmasked_model_exactly():
    model = _model()
    masked = MaskedViT(model, ARCH).eval()
    x = _x()
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(masked(x), ref)  # same ops as timm's forward, times exact ones
    assert [tuple(m.shape) for m in masked.attn_masks] == [(4, 16), (2, 16), (3, 16)]
    assert [tuple(m.shape) for m in masked.mlp_masks] == [(96,), (64,), (128,)]
    assert all(bool((m == 1).all()) for m in masked.mask_parameters())
    # token scores start at 3 (tanh 0.995); at a large score tanh is 1 and the model is unchanged
    tok = MaskedViT(model, ARCH, tokens=True).eval()
    assert all(bool((s == 3.0).all()) and s.shape == (16,) for s in tok.token_scores)
    with torch.no_grad():
        for s in tok.token_scores:
            s.fill_(20.0)
        assert torch.allclose(tok(x), ref, atol=1e-6, rtol=0)  # + a zero additive key bias


def test_masks_change_outputs_and_get_gradients():
    masked = MaskedViT(_model(), ARCH, tokens=True)
    x = _x()
    loss = masked(x).logsumexp(-1).mean() + masked.sparsity_loss(2e-4, 5e-5, 1e-4)
    loss.backward()
    for p in masked.mask_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    with torch.no_grad():
        before = masked(x)
        masked.attn_masks[0][1, 3] = 0.0
        assert not torch.allclose(masked(x), before)


def test_sparsity_loss_is_the_weighted_l1_of_each_kind():
    masked = MaskedViT(_model(), ARCH, tokens=True)
    _random_masks(masked)
    n_tok = ARCH.depth * ARCH.num_patches
    with torch.no_grad():
        for s in masked.token_scores:
            s.fill_(-0.5)  # |tanh| is penalised, also for negative scores
    got = masked.sparsity_loss(2.0, 3.0, 5.0).item()
    want = (2.0 * sum(m.abs().sum().item() for m in masked.attn_masks)
            + 3.0 * sum(m.abs().sum().item() for m in masked.mlp_masks)
            + 5.0 * n_tok * abs(torch.tanh(torch.tensor(-0.5)).item()))
    assert got == pytest.approx(want, rel=1e-5)
    assert masked.sparsity_loss(0.0, 0.0, 0.0).item() == 0.0


def test_token_masks_are_nested_over_depth_and_never_mask_cls():
    masked = MaskedViT(_model(), ARCH, tokens=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for s in masked.token_scores:
            s.copy_(torch.randn(s.shape, generator=g) * 2)
    eff = masked.token_masks()
    for a, b in zip(eff, eff[1:], strict=False):
        assert bool((b <= a).all())
    assert all(t.numel() == ARCH.num_patches for t in eff)  # CLS has no mask entry at all
    for keep in (0.2, 0.5, 0.8):
        plan = token_plan(masked.scores()["tokens"], keep)
        sets = [set(k) for k in plan]
        assert all(later <= earlier for earlier, later in zip(sets, sets[1:], strict=False))
        assert all(len(s) >= 1 for s in sets)
        counts = [len(s) for s in sets]
        assert counts == sorted(counts, reverse=True)
    with pytest.raises(ValueError, match="not nested"):
        masked.set_token_keep([[0, 1], [1, 2], [1]])


def test_soft_token_mask_zero_takes_the_token_out_of_attention():
    model = _model()
    masked = MaskedViT(model, ARCH, tokens=True).eval()
    with torch.no_grad():
        for s in masked.token_scores:
            s.fill_(20.0)
        masked.token_scores[0][5] = -1.0  # tanh < 0 -> mask 0 from layer 0 on (cumulative min)
        x = _x(3)
        y = x.clone()
        y[:, :, 4:8, 4:8] += 5.0  # patch 5 (row 1, col 1) only
        assert torch.equal(masked(x), masked(y))
        assert not torch.allclose(model(x), model(y))


def test_removed_tokens_are_gone_not_zeroed():
    masked = MaskedViT(_model(), ARCH, tokens=True).eval()
    keep = [list(range(16)), [j for j in range(16) if j != 9], [0, 2, 3, 7, 11]]
    masked.set_token_keep(keep)
    x = _x(4)
    n_seen = []
    hooks = [blk.norm1.register_forward_hook(lambda _m, _i, o: n_seen.append(o.shape[1]))
             for blk in masked.model.blocks]
    with torch.no_grad():
        base = masked(x)
        # the token's input to the block where it is removed (block 0's last residual update, fc2,
        # is added to it): perturb it there, outputs unchanged

        def perturb(_m, args):
            z = args[0].clone()
            # row of patch 9 entering block 1 (all 17 tokens still present); not a constant shift,
            # which LayerNorm would cancel
            z[:, 1 + 9] += 10.0 * torch.randn(z.shape[-1], generator=torch.Generator().manual_seed(0))
            return (z,)

        h = masked.model.blocks[0].mlp.fc2.register_forward_hook(lambda _m, _i, o: perturb(_m, (o,))[0])
        pert = masked(x)
        h.remove()
    for hk in hooks:
        hk.remove()
    assert n_seen[:3] == [17, 16, 6]  # CLS + kept patches, per block
    assert torch.equal(base, pert)
    # the same perturbation while the token is still kept does change the output
    masked.set_token_keep([list(range(16))] * 3)
    with torch.no_grad():
        a = masked(x)
        h = masked.model.blocks[0].mlp.fc2.register_forward_hook(lambda _m, _i, o: perturb(_m, (o,))[0])
        b = masked(x)
        h.remove()
    assert not torch.allclose(a, b)


# ---- budget ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flops", "params"])
def test_budget_hits_random_targets_within_two_percent(kind):
    rng = random.Random(0)
    arch = Arch.create(embed_dim=64, depth=4, num_heads=[4, 3, 2, 4], head_dim=16, mlp_hidden=[256, 192, 128, 256],
                       patch_size=4, img_size=16, in_chans=1, num_classes=10)
    masked = MaskedViT(_model(arch), arch)
    count = count_flops if kind == "flops" else count_params
    full = count(arch)
    for trial in range(6):
        _random_masks(masked, seed=trial)
        ratio = rng.uniform(0.35, 0.95)
        plan = solve_budget(arch, masked.scores(), kind=kind, ratio=ratio)
        assert abs(count(plan.arch) / (ratio * full) - 1) <= 0.02, (ratio, count(plan.arch) / full)
        assert plan.cost == count(plan.arch)
        for i in range(arch.depth):
            assert 1 <= plan.arch.num_heads[i] <= arch.num_heads[i]
            assert 1 <= plan.arch.head_dim[i] <= arch.head_dim[i]
            assert 1 <= plan.arch.mlp_hidden[i] <= arch.mlp_hidden[i]
            assert len(plan.heads[i]) == plan.arch.num_heads[i]
            assert all(len(d) == plan.arch.head_dim[i] for d in plan.dims[i])
            assert len(set(plan.mlp[i])) == plan.arch.mlp_hidden[i]


def test_budget_respects_round_to_and_keeps_the_best_entries():
    arch = Arch.create(embed_dim=64, depth=4, num_heads=[4, 3, 2, 4], head_dim=32, mlp_hidden=[256, 200, 128, 256],
                       patch_size=4, img_size=16, in_chans=1, num_classes=10)
    masked = MaskedViT(_model(arch), arch)
    for seed, ratio in ((0, 0.6), (1, 0.45), (2, 0.8)):
        _random_masks(masked, seed)
        plan = solve_budget(arch, masked.scores(), ratio=ratio, round_to=8)
        assert abs(plan.cost / (ratio * count_flops(arch)) - 1) <= 0.02
        for i in range(arch.depth):
            hd, m = plan.arch.head_dim[i], plan.arch.mlp_hidden[i]
            assert hd % 8 == 0 or hd == arch.head_dim[i]
            assert m % 8 == 0 or m == arch.mlp_hidden[i]
            # within a layer, kept MLP units are the top-scoring ones
            s = masked.mlp_masks[i].detach()
            kept = torch.zeros_like(s, dtype=torch.bool)
            kept[list(plan.mlp[i])] = True
            if (~kept).any():
                assert s[kept].min() >= s[~kept].max()
    # global ranking: a layer whose masks are all tiny is cut to the minimum, the others barely
    with torch.no_grad():
        for m in masked.mlp_masks:
            m.fill_(1.0)
        masked.mlp_masks[1].fill_(1e-3)
    plan = solve_budget(arch, masked.scores(), ratio=0.85, round_to=8)
    assert plan.arch.mlp_hidden[1] == 8
    assert plan.arch.mlp_hidden[0] > 8 and plan.arch.mlp_hidden[3] > 8


def test_attention_shape_rules():
    arch = Arch.create(embed_dim=32, depth=1, num_heads=4, head_dim=16, mlp_hidden=32, patch_size=4, img_size=16,
                       in_chans=1, num_classes=10)
    g = torch.Generator().manual_seed(0)
    attn = 0.5 + 0.5 * torch.rand(4, 16, generator=g)
    attn[2] = 0.01 * torch.rand(16, generator=g)  # head 2 is useless
    attn[0, :12] *= 0.1  # head 0 has only 4 strong dims
    mlp = [torch.ones(32)]
    fit = BudgetSolver(arch, [attn], mlp, head_rule="fit")
    # the 36 best entries: heads 1 and 3 whole + head 0's 4 strong dims
    heads, hdims, _ = fit.widths(36, 32)
    assert (heads, hdims) == ([[0, 1, 3]], [12])  # 3 x 12 = 36, the smallest width >= 36
    heads, hdims, _ = fit.widths(48, 32)  # 3x16 and 4x12 tie on width: the one keeping most mass
    assert (heads, hdims) == ([[0, 1, 3]], [16])
    plan = fit.plan(48, 32)
    assert plan.dims[0][1] == tuple(range(16))
    mx = BudgetSolver(arch, [attn], mlp, head_rule="max")
    heads, hdims, _ = mx.widths(36, 32)  # every head with a kept entry, at the largest kept count
    assert (heads, hdims) == ([[0, 1, 3]], [16])
    plan = mx.plan(36, 32)
    assert set(range(12, 16)) <= set(plan.dims[0][0])  # head 0 keeps its strong dims (+ padding)
    heads, hdims, _ = mx.widths(0, 32)  # nothing kept: the best head, one dim
    assert (heads, hdims) == ([[1]], [1]) or (heads, hdims) == ([[3]], [1])
    with pytest.raises(ValueError, match="head_rule"):
        BudgetSolver(arch, [attn], mlp, head_rule="nope")


def test_budget_target_one_keeps_everything_and_impossible_targets_fail():
    masked = MaskedViT(_model(), ARCH)
    _random_masks(masked)
    plan = solve_budget(ARCH, masked.scores(), ratio=1.0)
    assert plan.arch.key() == ARCH.key()
    solver = BudgetSolver(ARCH, masked.scores()["attn"], masked.scores()["mlp"], round_to=4)
    low = solver.min_cost() / solver.full_cost()
    with pytest.raises(BudgetError, match="below the smallest prunable model"):
        solver.solve(low * 0.5)
    plan = solver.solve(low)  # the minimum itself is reachable
    assert plan.arch.num_heads == (1, 1, 1) and plan.arch.mlp_hidden == (4, 4, 4)


# ---- pruning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("round_to,head_rule", [(1, "max"), (8, "max"), (1, "fit"), (4, "fit")])
def test_pruned_model_equals_masked_model_with_binarised_masks(round_to, head_rule):
    model = _model()
    masked = MaskedViT(model, ARCH).eval()
    _random_masks(masked, seed=round_to)
    plan = solve_budget(ARCH, masked.scores(), ratio=0.55, round_to=round_to, head_rule=head_rule)
    masked.apply_plan(plan)
    # binarised: exactly the plan's entries are non-zero, with their soft values
    for i, m in enumerate(masked.attn_masks):
        assert int((m != 0).sum()) == plan.arch.num_heads[i] * plan.arch.head_dim[i]
    for i, m in enumerate(masked.mlp_masks):
        assert int((m != 0).sum()) == plan.arch.mlp_hidden[i]
    pruned = prune(masked, plan).eval()
    assert type(pruned) is type(build(plan.arch))
    assert sum(p.numel() for p in pruned.parameters()) == count_params(plan.arch)
    assert count_params(plan.arch) < count_params(ARCH)
    x = _x(8)
    with torch.no_grad():
        a, b = masked(x), pruned(x)
        assert (a - b).abs().max().item() <= 1e-4
        assert (a - model(x)).abs().max().item() > 1e-3  # the binarised masks really did something


def test_pruned_model_round_trips_through_arch_json_and_safetensors(tmp_path):
    masked = MaskedViT(_model(), ARCH).eval()
    _random_masks(masked)
    plan = solve_budget(ARCH, masked.scores(), ratio=0.6)
    masked.apply_plan(plan)
    pruned = prune(masked, plan).eval()
    save_model(pruned, plan.arch, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["arch.json", "config.json", "model.safetensors"]
    arch = Arch.load(tmp_path / "m" / "arch.json")
    assert arch == plan.arch
    from safetensors.torch import load_file

    fresh = build(arch).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "m" / "model.safetensors")), strict=True)
    loaded, arch2 = load_model(tmp_path / "m")
    x = _x()
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))
        assert torch.equal(loaded.eval()(x), pruned(x))
    with pytest.raises(ArtifactError, match="arch.json: not found"):
        load_model(tmp_path)
    (tmp_path / "m" / "arch.json").write_text(ARCH.to_json())
    with pytest.raises(ArtifactError, match="config.json: its model_args describes another model than arch.json"):
        load_model(tmp_path / "m")  # vitnas and timm would build different models
    (tmp_path / "m" / "config.json").unlink()  # an older directory, arch.json alone: the weights' header decides
    with pytest.raises(ArtifactError, match="do not fit"):
        load_model(tmp_path / "m")


def test_trainer_sparsifies_masks_and_keeps_training_the_weights():
    torch.manual_seed(0)
    model = _model()
    masked = MaskedViT(model, ARCH)
    w0 = model.blocks[0].mlp.fc1.weight.detach().clone()
    trainer = SlimTrainer(masked, lr=1e-2, w_attn=1e-2, w_mlp=1e-2, distill=True, amp=False)
    x, y = _x(16), torch.randint(0, 10, (16,))
    stats = [trainer.step(x, y) for _ in range(5)]
    assert all("kd" in s and s["l1"] > 0 for s in stats)
    assert trainer.mask_stats()["mask_attn_mean"] < 1.0 and trainer.mask_stats()["mask_mlp_mean"] < 1.0
    assert not torch.equal(model.blocks[0].mlp.fc1.weight, w0)
    # the teacher is a frozen copy of the unmasked model
    assert torch.equal(trainer.teacher.blocks[0].mlp.fc1.weight, w0)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())


# ---- physical token pruning ----------------------------------------------------------------
def _token_masks(masked: MaskedViT, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in masked.token_scores:
            s.copy_(torch.randn(s.shape, generator=g) * 1.5 + 1.0)


@pytest.mark.parametrize("token_keep", [0.5, 0.8])
def test_token_pruned_model_equals_masked_model_and_costs_what_count_flops_says(token_keep):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = _model()
    masked = MaskedViT(model, ARCH, tokens=True).eval()
    _random_masks(masked, seed=2)
    _token_masks(masked)
    plan = solve_budget(ARCH, masked.scores(), ratio=0.5, token_keep=token_keep)
    assert plan.arch.keep_tokens == tuple(len(t) for t in plan.tokens)
    assert sum(plan.arch.keep_tokens) < ARCH.depth * ARCH.num_patches
    assert abs(plan.rel_error) <= 0.02  # the tokens' savings are inside the solved FLOPs
    masked.apply_plan(plan)
    pruned = prune(masked, plan).eval()
    x = _x(8)
    with torch.no_grad():
        a, b = masked(x), pruned(x)
    assert (a - b).abs().max().item() <= 1e-4
    assert sum(p.numel() for p in pruned.parameters()) == count_params(plan.arch)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        pruned(x[:1])
    assert fc.get_total_flops() // 2 == count_flops(plan.arch)  # dropped tokens are never computed


def test_token_pruned_model_round_trips_and_loads_with_all_tokens(tmp_path):
    masked = MaskedViT(_model(), ARCH, tokens=True).eval()
    _random_masks(masked)
    _token_masks(masked)
    plan = solve_budget(ARCH, masked.scores(), ratio=0.6, token_keep=0.6)
    masked.apply_plan(plan)
    pruned = prune(masked, plan).eval()
    save_model(pruned, plan.arch, tmp_path / "m")
    loaded, arch = load_model(tmp_path / "m")
    assert arch.keep_tokens == plan.arch.keep_tokens
    x = _x()
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned(x))  # the kept positions travel with the weights
    full, full_arch = load_model(tmp_path / "m", all_tokens=True)
    assert full_arch.keep_tokens is None and count_flops(full_arch) > count_flops(arch)
    big = full_arch.replace(img_size=32)  # e.g. fine-tuning at another size needs every token
    assert big.num_patches == 64
    with pytest.raises(ValueError, match="keep_tokens"):
        arch.replace(img_size=32)


def test_keep_tokens_are_validated_and_rejected_where_they_cannot_apply():
    from vitnas import ArchError, SearchSpace
    from vitnas.supernet import Supernet

    d = ARCH.to_dict()
    for bad, msg in (([16, 17, 3], "more than the 16"), ([4, 8, 2], "cannot come back"), ([4, 4], "entries"),
                     ([4, 0, 0], "must be > 0")):
        with pytest.raises(ArchError, match=msg):
            Arch.from_dict({**d, "keep_tokens": bad})
    a = Arch.from_dict({**d, "keep_tokens": [16, 9, 4]})
    assert Arch.from_dict(a.to_dict()) == a and a.key() != ARCH.key()
    assert [a.tokens_in(i) for i in range(3)] == [17, 10, 5]
    with pytest.raises(ValueError, match="already removes tokens"):
        MaskedViT(build(a), a)
    space = SearchSpace.preset("demo")
    arch = space.largest().replace(keep_tokens=[8] * space.largest().depth)
    with pytest.raises(ArchError, match="removes tokens"):
        Supernet(space).check_arch(arch)


def test_fading_scales_what_the_plan_drops_and_at_zero_is_the_pruned_model():
    model = _model()
    masked = MaskedViT(model, ARCH).eval()
    _random_masks(masked, seed=3)
    plan = solve_budget(ARCH, masked.scores(), ratio=0.55)
    x = _x(8)
    with torch.no_grad():
        full = masked(x)
        masked.fade(plan, 1.0)
        assert torch.equal(masked(x), full)  # level 1: nothing changes yet
        masked.fade(plan, 0.5)
        half = masked(x)
        masked.fade(plan, 0.0)
        gone = masked(x)
    assert (half - full).abs().max() > 1e-4 and (gone - half).abs().max() > 1e-4
    g = masked.attn_gate_0
    kept = torch.zeros_like(g, dtype=torch.bool)
    for h, ds in zip(plan.heads[0], plan.dims[0], strict=True):
        kept[h, list(ds)] = True
    assert (g[kept] == 1).all() and (g[~kept] == 0).all()
    assert masked.scores()["attn"][0].min() > 0  # a faded entry still ranks by its own mask
    masked.apply_plan(plan)  # the cut after fading to 0 changes nothing
    pruned = prune(masked, plan).eval()
    with torch.no_grad():
        assert (pruned(x) - gone).abs().max().item() <= 1e-4
        assert (masked(x) - gone).abs().max().item() <= 1e-5

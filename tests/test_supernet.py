"""Weight-entangled supernet: subnet == extracted model, gradients, copies, files, timm init."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

import vitnas
from vitnas import Arch, ArchError, SearchSpace, Supernet, extract
from vitnas.supernet import FORMAT, SupernetFileError, init_from_timm, timm_views

TINY = SearchSpace(embed_dim=(16, 24, 32), depth=(1, 2, 3), num_heads=(1, 2, 3), mlp_ratio=(1.5, 2.0),
                   head_dim=8, patch_size=4, img_size=16, in_chans=3, num_classes=5, name="tiny")
DEMO = SearchSpace.preset("demo")


def _images(space: SearchSpace, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, space.in_chans, space.img_size, space.img_size, generator=g)


def _net(space: SearchSpace, seed: int = 0, **kw) -> Supernet:
    torch.manual_seed(seed)
    return Supernet(space, **kw)


def _trained_like(net: Supernet, seed: int = 0) -> Supernet:
    """Random non-zero values everywhere: the init's zero biases and unit norms would hide slicing bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("space", [DEMO, TINY], ids=["demo", "tiny"])
def test_subnet_outputs_equal_extracted_model(space):
    net = _trained_like(_net(space)).eval()
    x = _images(space)
    archs = [space.sample(seed) for seed in range(20)] + [space.smallest(), space.largest()]
    assert len({a.key() for a in archs}) > 15  # the samples really differ
    with torch.no_grad():
        for arch in archs:
            model = extract(net, arch).eval()
            assert isinstance(model, VisionTransformer)
            assert sum(p.numel() for p in model.parameters()) == vitnas.count_params(arch)
            diff = (net(x, arch) - model(x)).abs().max().item()
            assert diff <= 1e-5, f"{arch}: max abs diff {diff}"


def test_archs_give_different_outputs_and_skip_deep_blocks():
    """Slices really change the function; blocks past the arch's depth are not run."""
    net = _net(DEMO).eval()
    x = _images(DEMO)
    small, large = DEMO.smallest(), DEMO.largest()
    with torch.no_grad():
        assert not torch.allclose(net(x, small), net(x, large))
        before = net(x, small)
        for blk in net.blocks[small.depth:]:
            for p in blk.parameters():
                p.add_(1.0)
        assert torch.equal(net(x, small), before)


def _grads_as_timm(net: Supernet, arch: Arch) -> dict[str, torch.Tensor]:
    """The supernet's gradients, read through the same slices as the weights."""
    g = copy.deepcopy(net)
    with torch.no_grad():
        for pg, p in zip(g.parameters(), net.parameters(), strict=True):
            pg.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    views = timm_views(g, arch.embed_dim, arch.num_heads, arch.mlp_hidden)
    return {k: v.reshape(-1) for k, v in views.items()}


def test_gradients_reach_exactly_the_used_qkv_rows_and_bias():
    """The AutoFormer bias bug: q/k/v weight rows and bias entries must slice the same heads."""
    net = _net(DEMO)
    arch = Arch.create(embed_dim=48, depth=2, num_heads=[2, 3], mlp_ratio=[2.0, 3.0], head_dim=16,
                       patch_size=4, img_size=16, in_chans=1, num_classes=10)
    assert DEMO.contains(arch)
    net(_images(DEMO), arch).square().sum().backward()

    hd, d_max = 16, net.embed_dim
    for i, heads in enumerate(arch.num_heads):
        qkv = net.blocks[i].attn.qkv
        assert qkv.weight.shape == (3, net.num_heads * hd, d_max)
        w_used = torch.zeros_like(qkv.weight, dtype=torch.bool)
        w_used[:, :heads * hd, :arch.embed_dim] = True
        b_used = torch.zeros_like(qkv.bias, dtype=torch.bool)
        b_used[:, :heads * hd] = True
        gw, gb = qkv.weight.grad, qkv.bias.grad
        assert torch.equal(gw != 0, w_used), f"block {i}: qkv weight grad outside the used q/k/v rows"
        assert torch.equal(gb != 0, b_used), f"block {i}: qkv bias grad does not match the used rows"
    for blk in net.blocks[arch.depth:]:
        assert all(p.grad is None for p in blk.parameters())


def test_gradients_equal_those_of_the_extracted_model():
    net = _trained_like(_net(TINY))
    arch = TINY.sample(3)
    x = _images(TINY)
    model = extract(net, arch)
    net(x, arch).square().sum().backward()
    model(x).square().sum().backward()
    ours = _grads_as_timm(net, arch)
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad.reshape(-1), atol=1e-6), name


def test_drop_path_only_in_training_and_linear_over_arch_depth():
    net = _trained_like(_net(DEMO, drop_path_rate=0.5))
    x = _images(DEMO, n=8)
    with torch.no_grad():
        for arch in (DEMO.largest(), DEMO.sample(4), DEMO.smallest()):
            torch.manual_seed(1)
            a = net(x, arch)
            torch.manual_seed(2)
            assert not torch.allclose(a, net(x, arch))  # stochastic depth active in training
            # Same per-block rates (linspace over the arch's depth) and the same random draws as
            # timm's model built with that rate.
            model = extract(net, arch, drop_path_rate=0.5)
            assert model.training
            torch.manual_seed(1)
            assert (model(x) - a).abs().max().item() <= 1e-5
            net.eval()
            assert torch.equal(net(x, arch), net(x, arch))
            assert (net(x, arch) - model.eval()(x)).abs().max().item() <= 1e-5
            net.train()


def test_forward_without_arch_runs_the_set_arch():
    net = _net(DEMO).eval()
    x = _images(DEMO)
    with torch.no_grad():
        assert net.arch == DEMO.largest()
        assert torch.equal(net(x), net(x, DEMO.largest()))
        small = DEMO.sample(5)
        net.set_arch(small.to_dict())
        assert net.arch == small
        assert torch.equal(net(x), net(x, small))


def test_deepcopy_is_independent():
    net = _net(TINY)
    twin = copy.deepcopy(net)
    arch = TINY.sample(1)
    x = _images(TINY)
    with torch.no_grad():
        assert torch.equal(net(x, arch), twin(x, arch))
    opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    twin(x, arch).square().sum().backward()
    opt.step()
    assert net.blocks[0].attn.qkv.weight.grad is None
    with torch.no_grad():
        assert not torch.allclose(net(x, arch), twin(x, arch))
        assert torch.equal(net(x, arch), copy.deepcopy(net)(x, arch))


def test_extract_copies_weights():
    net = _net(TINY).eval()
    arch = TINY.largest()
    x = _images(TINY)
    model = extract(net, arch).eval()
    with torch.no_grad():
        before = net(x, arch)
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(net(x, arch), before)
        assert not torch.allclose(model(x), before)


def test_state_dict_is_plain():
    net = _net(TINY)
    sd = net.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert sd["blocks.0.attn.qkv.weight"].shape == (3, 3 * 8, 32)
    assert sd["blocks.0.mlp.fc1.weight"].shape == (int(32 * 2.0), 32)
    assert len([k for k in sd if k.endswith("norm1.weight")]) == max(TINY.depth)
    other = _net(TINY, seed=1)
    other.load_state_dict(sd)
    x, arch = _images(TINY), TINY.sample(0)
    with torch.no_grad():
        assert torch.equal(net.eval()(x, arch), other.eval()(x, arch))


def test_save_load_round_trip(tmp_path):
    net = _net(DEMO)
    path = net.save(tmp_path / "sub" / "supernet.pt", meta={"epoch": 3, "note": "x"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["supernet.pt"]  # no temp left behind
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["space"] == DEMO.to_dict()
    loaded = Supernet.load(path)
    assert loaded.space == DEMO and loaded.meta == {"epoch": 3, "note": "x"}
    x = _images(DEMO)
    with torch.no_grad():
        for arch in (DEMO.sample(0), DEMO.largest()):
            assert torch.equal(net.eval()(x, arch), loaded.eval()(x, arch))


def test_save_rejects_non_plain_meta(tmp_path):
    with pytest.raises(ValueError, match="meta"):
        _net(TINY).save(tmp_path / "s.pt", meta={"bad": object()})
    assert not any(tmp_path.iterdir())


def test_load_errors_are_clear(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(SupernetFileError, match="not found") as e:
        Supernet.load(missing)
    assert str(missing) in str(e.value) and isinstance(e.value, ValueError)

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage, not a torch file" * 10)
    with pytest.raises(SupernetFileError, match="not a readable torch file") as e:
        Supernet.load(corrupt)
    assert str(corrupt) in str(e.value) and "\n" not in str(e.value)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(SupernetFileError, match="not a vitnas supernet"):
        Supernet.load(foreign)

    mismatched = tmp_path / "mismatched.pt"
    _net(TINY).save(mismatched)
    payload = torch.load(mismatched, weights_only=True)
    payload["space"] = DEMO.to_dict()
    torch.save(payload, mismatched)
    with pytest.raises(SupernetFileError, match="do not fit"):
        Supernet.load(mismatched)


@pytest.mark.parametrize(("change", "reason"), [
    ({"embed_dim": 40}, "embed_dim 40"),
    ({"num_classes": 3}, "num_classes 3"),
    ({"img_size": 32}, "img_size 32"),
    ({"head_dim": 8}, "head_dim"),
    ({"num_heads": 5}, "num_heads"),
    ({"depth": 5, "num_heads": 2, "mlp_ratio": 2.0}, "depth 5"),
])
def test_arch_outside_space_is_rejected(change, reason):
    net = _net(DEMO)
    arch = DEMO.sample(0).replace(**change)
    x = _images(DEMO)
    with pytest.raises(ArchError, match=reason) as e:
        net(x, arch)
    assert "not in the supernet's search space" in str(e.value)
    with pytest.raises(ValueError, match=reason):
        extract(net, arch)
    with pytest.raises(ValueError, match=reason):
        net.set_arch(arch)
    assert net.arch == DEMO.largest()  # a rejected set_arch changes nothing


def test_check_arch_and_non_arch_inputs():
    net = _net(DEMO)
    net.check_arch(DEMO.sample(1))
    with pytest.raises(ArchError, match="embed_dim 40"):
        net.check_arch(DEMO.sample(1).replace(embed_dim=40))
    with pytest.raises(TypeError, match="vitnas.Arch"):
        net(_images(DEMO), DEMO.sample(1).to_dict())


def test_arch_given_by_mlp_hidden_is_rejected():
    arch = DEMO.sample(0)
    by_hidden = Arch.from_dict({**{k: v for k, v in arch.to_dict().items() if k != "mlp_ratio"},
                                "mlp_hidden": list(arch.mlp_hidden)})
    with pytest.raises(ArchError, match="mlp_hidden"):
        _net(DEMO)(_images(DEMO), by_hidden)


def test_wrong_input_size_is_rejected():
    with pytest.raises(ValueError, match="16x16"):
        _net(DEMO)(torch.randn(1, 1, 32, 32), DEMO.smallest())


# ---- init from timm -------------------------------------------------------------------------

def _timm_vit(**kw) -> VisionTransformer:
    torch.manual_seed(7)
    args = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=48, depth=3,
                num_heads=3, mlp_ratio=2.0, qkv_bias=True)
    args.update(kw)
    return VisionTransformer(**args).eval()


def _demo_arch(embed=48, depth=3, heads=3, ratio=2.0) -> Arch:
    return Arch.create(embed_dim=embed, depth=depth, num_heads=heads, mlp_ratio=ratio, head_dim=16,
                       patch_size=4, img_size=16, in_chans=1, num_classes=10)


@pytest.mark.parametrize("kind", ["module", "state_dict", "pth", "safetensors"])
def test_init_from_timm_reproduces_the_timm_model(kind, tmp_path):
    vit = _timm_vit()
    if kind == "module":
        source = vit
    elif kind == "state_dict":
        source = {"model": vit.state_dict()}
    elif kind == "pth":
        source = tmp_path / "vit.pth"
        torch.save(vit.state_dict(), source)
    else:
        from safetensors.torch import save_file

        source = str(tmp_path / "vit.safetensors")
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, source)
    net = _net(DEMO)
    report = init_from_timm(net, source)
    assert (report.embed_dim, report.depth, report.num_heads, report.mlp_hidden, report.skipped) == (
        48, 3, (3, 3, 3), (96, 96, 96), ())
    arch = _demo_arch()
    x = _images(DEMO)
    with torch.no_grad():
        expected = vit(x)
        assert (extract(net, arch).eval()(x) - expected).abs().max().item() <= 1e-5
        assert (net.eval()(x, arch) - expected).abs().max().item() <= 1e-5


def test_init_from_timm_without_qkv_bias():
    vit = _timm_vit(qkv_bias=False)
    net = _trained_like(_net(DEMO))
    init_from_timm(net, vit.state_dict())
    x = _images(DEMO)
    with torch.no_grad():
        assert (net.eval()(x, _demo_arch()) - vit(x)).abs().max().item() <= 1e-5


def test_init_from_timm_resamples_pos_embed_and_skips_other_classifier():
    vit = _timm_vit(img_size=32, num_classes=7)
    net = _net(DEMO)
    head_before = net.head.weight.detach().clone()
    report = init_from_timm(net, vit)
    assert report.skipped == ("head.weight", "head.bias")
    assert torch.equal(net.head.weight, head_before)
    want = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=[4, 4], num_prefix_tokens=1)
    assert torch.allclose(net.pos_embed[:, :, :48], want)
    assert torch.equal(net.blocks[2].mlp.fc2.weight[:48, :96], vit.blocks[2].mlp.fc2.weight)


def test_init_from_timm_rejects_wider_models_and_other_head_dims(tmp_path):
    with pytest.raises(ValueError, match="wider than the supernet .embed_dim 96 > 64"):
        init_from_timm(_net(DEMO), _timm_vit(embed_dim=96, num_heads=6))
    with pytest.raises(ValueError, match="wider than the supernet .depth 5 > 4"):
        init_from_timm(_net(DEMO), _timm_vit(depth=5))
    with pytest.raises(ValueError, match="head dim 8 differs"):
        init_from_timm(_net(DEMO), _timm_vit(num_heads=6))  # 48 / 6 = 8, the space's is 16
    with pytest.raises(ValueError, match="checkpoint file not found"):
        init_from_timm(_net(DEMO), tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unsupported timm ViT weight"):
        init_from_timm(_net(DEMO), _timm_vit(init_values=1e-5))  # layer scale

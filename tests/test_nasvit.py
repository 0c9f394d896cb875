"""NASViT's supernet training (`supernet.sampling: nasvit`): the gradient projection against its
formula, the adaptive alpha-divergence against autograd of D_alpha, and the step that combines them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitnas import SearchSpace, Supernet
from vitnas.config import parse_params
from vitnas.supernet import trainer as trainer_module
from vitnas.supernet.nasvit import alpha_divergence, project_conflicting
from vitnas.supernet.trainer import SupernetTrainer, step_archs
from vitnas.train import DistInfo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_conflicting_subnet_gradient_is_projected_onto_the_normal_plane_per_tensor():
    torch.manual_seed(0)
    gl = [torch.randn(5, 3), torch.randn(4), torch.randn(2, 2)]
    gs = [-gl[0] + 0.1 * torch.randn(5, 3), gl[1] + 0.1 * torch.randn(4), None]
    before = [g.clone() for g in gs[:2]]
    assert project_conflicting(gs, gl) == 1  # the first conflicts, the second does not, the third is absent
    want = before[0] - (before[0] * gl[0]).sum() / gl[0].pow(2).sum() * gl[0]
    assert torch.allclose(gs[0], want, atol=1e-6)
    assert abs(float((gs[0] * gl[0]).sum())) < 1e-4  # now orthogonal to the largest subnet's gradient
    assert torch.equal(gs[1], before[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_adaptive_alpha_divergence_has_the_gradient_of_the_larger_d_alpha(seed):
    torch.manual_seed(seed)
    logits = torch.randn(6, 10, requires_grad=True)
    teacher = torch.softmax(torch.randn(6, 10), -1)
    loss = alpha_divergence(logits, teacher, iw_clip=1e9)  # nothing clipped: the exact divergences
    got, = torch.autograd.grad(loss, logits)
    q = torch.softmax(logits, -1)
    d_minus = ((q * (teacher / q).pow(-1.0)).sum(-1) - 1) / 2.0  # D_-1(p || q) = (sum q^2 / p - 1) / 2
    d_plus = (teacher * (teacher / q).log()).sum(-1)  # D_1(p || q) = KL(p || q)
    want, = torch.autograd.grad(torch.maximum(d_minus, d_plus).mean(), logits)
    assert torch.allclose(got, want, atol=1e-5)
    with torch.no_grad():  # NASViT's clip (5) keeps a confident wrong student finite
        far = torch.full((2, 10), -30.0)
        far[:, 0] = 30.0
        assert torch.isfinite(alpha_divergence(far, F.one_hot(torch.tensor([3, 4]), 10).float() * 0.99 + 0.001))


def _trainer(sampling: str, kd_warmup: int = 0) -> SupernetTrainer:
    space = SearchSpace.preset("demo")
    torch.manual_seed(0)
    return SupernetTrainer(Supernet(space), dist=DistInfo(), epochs=1, steps_per_epoch=2, lr=1e-3, min_lr=1e-5,
                           weight_decay=0.0, warmup_epochs=0, mixup=0.0, cutmix=0.0, label_smoothing=0.0,
                           ema_decay=None, amp=False, sampling=sampling, kd_warmup_epochs=kd_warmup)


def test_a_nasvit_step_applies_the_largest_gradient_plus_the_projected_subnet_gradient(monkeypatch):
    tr = _trainer("nasvit")
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    archs = step_archs(tr.space, "nasvit", 2, 0, 0, 0)
    assert archs[0] == tr.space.largest() and archs[1] == tr.space.smallest() and len(archs) == 4
    params = [p for p in tr.model.parameters() if p.requires_grad]

    def grads(loss):
        return torch.autograd.grad(loss, params, allow_unused=True)

    logits = tr.model(x, archs[0])
    g_l = grads(F.cross_entropy(logits, y))
    teacher = logits.detach().softmax(-1)
    g_s = [None] * len(params)
    for arch in archs[1:]:
        for i, g in enumerate(grads(alpha_divergence(tr.model(x, arch), teacher))):
            if g is not None:
                g_s[i] = g if g_s[i] is None else g_s[i] + g
    g_s = [None if g is None else g.clone() for g in g_s]
    n = project_conflicting(g_s, list(g_l))
    assert n > 0  # there are conflicts to project on this batch
    seen = {}
    monkeypatch.setattr(trainer_module, "apply_update",
                        lambda model, *a, **k: seen.update(g=[p.grad.clone() for p in params]) or 1)
    loss, share = tr._step_nasvit(x, y, archs, "test", distill=True)
    assert share == pytest.approx(n / len(params)) and loss == pytest.approx(F.cross_entropy(logits, y).item())
    for got, gl, gs in zip(seen["g"], g_l, g_s, strict=True):
        want = (gl if gl is not None else 0) + (gs if gs is not None else 0)
        assert torch.allclose(got, want, atol=1e-5)


def test_the_subnets_learn_from_the_labels_during_the_kd_warmup(monkeypatch):
    called = []
    monkeypatch.setattr(trainer_module, "alpha_divergence", lambda *a, **k: called.append(1) or a[0].sum() * 0)
    tr = _trainer("nasvit", kd_warmup=1)
    batch = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    stats = tr.train_epoch(batch, epoch=0, progress=False)
    assert not called and 0 <= stats["conflicting_tensors"] <= 1  # epoch 0 < kd_warmup_epochs: labels
    tr.train_epoch(batch, epoch=1, progress=False)
    assert len(called) == 3  # then the smallest and 2 random subnets are distilled


def test_the_supernet_stage_trains_with_nasvit_sampling(digits_dir, tmp_path):
    from vitnas.stages import supernet as stage

    p = parse_params({"tracking": {"enabled": False},
                      "supernet": {"epochs": 2, "warmup_epochs": 1, "batch_size": 256, "sampling": "nasvit",
                                   "val_random_subnets": 1, "layer_scale": 0.1}})
    assert p.supernet.kd_warmup_epochs is None  # the lr warm-up's length
    m = stage.run(p, digits_dir, tmp_path / "sn", progress=False)
    assert m["epochs"] == 2 and 0 <= m["val_acc_largest"] <= 1
    net = Supernet.load(tmp_path / "sn" / "supernet.pt")
    assert net.layer_scale == 0.1 and not torch.all(net.blocks[0].ls1 == 0.1)  # the scales were trained
    history = net.meta["history"]
    assert all(0 <= h["conflicting_tensors"] <= 1 for h in history) and history[0]["conflicting_tensors"] > 0


# ---- switchable layer scaling --------------------------------------------------------------------
def _scaled_supernet() -> Supernet:
    torch.manual_seed(0)
    net = Supernet(SearchSpace.preset("demo"), layer_scale=0.1)
    with torch.no_grad():  # trained scales differ per channel and per (depth, width)
        for block in net.blocks:
            block.ls1.uniform_(0.05, 1.5)
            block.ls2.uniform_(0.05, 1.5)
    return net.eval()


def test_layer_scales_fold_into_the_extracted_model_exactly():
    import random

    from vitnas import extract

    net = _scaled_supernet()
    space, x = net.space, torch.randn(3, 1, 16, 16)
    for arch in [space.smallest(), space.largest(), *(space.sample(random.Random(s)) for s in range(4))]:
        model = extract(net, arch).eval()  # a plain timm ViT: the scales are in its weights
        assert not any(k.endswith((".ls1", ".ls2", ".gamma")) for k in model.state_dict())
        with torch.no_grad():
            assert torch.allclose(model(x), net(x, arch), atol=1e-5), arch


def test_each_depth_and_width_trains_its_own_scales():
    net = _scaled_supernet().train()
    space = net.space
    a = space.make_arch(max(space.embed_dim), [1] * max(space.depth), [2.0] * max(space.depth))
    b = space.make_arch(min(space.embed_dim), [1] * min(space.depth), [2.0] * min(space.depth))
    net(torch.randn(2, 1, 16, 16), a).sum().backward()
    row_a = net.blocks[0].scale_index[(a.depth, a.embed_dim)]
    row_b = net.blocks[0].scale_index[(b.depth, b.embed_dim)]
    grad = net.blocks[0].ls1.grad
    assert grad[row_a].abs().sum() > 0 and grad[row_b].abs().sum() == 0
    # block i only has rows for the depths that reach it
    assert all(d > i for i, blk in enumerate(net.blocks) for d, _ in blk.scale_index)
    assert {"blocks.0.ls1", "blocks.0.ls2"} <= net.no_weight_decay()


def test_layer_scales_survive_save_and_load(tmp_path):
    from vitnas.supernet import SupernetFileError

    net = _scaled_supernet()
    path = net.save(tmp_path / "s.pt")
    back = Supernet.load(path).eval()
    assert back.layer_scale == 0.1
    arch = net.space.largest()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(x, arch), net(x, arch))
    payload = torch.load(path, weights_only=True)
    payload["layer_scale"] = None  # the weights hold scales the file says it has not
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(SupernetFileError, match="weights do not fit"):
        Supernet.load(tmp_path / "bad.pt")


def test_layer_scale_refusals():
    with pytest.raises(ValueError, match="layer_scale: switchable layer scaling .* GLiT"):
        Supernet(SearchSpace.preset("glit-demo"), layer_scale=0.1)
    with pytest.raises(Exception, match=r"^supernet\.layer_scale: switchable layer scaling"):
        parse_params({"space": {"preset": "glit-demo"}, "supernet": {"layer_scale": 0.1}})
    with pytest.raises(Exception, match=r"^supernet\.layer_scale: timm ViT weights have no layer scales"):
        parse_params({"supernet": {"layer_scale": 0.1, "pretrained": "x.pth"}})

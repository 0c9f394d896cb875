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
                                   "val_random_subnets": 1}})
    assert p.supernet.kd_warmup_epochs is None  # the lr warm-up's length
    m = stage.run(p, digits_dir, tmp_path / "sn", progress=False)
    assert m["epochs"] == 2 and 0 <= m["val_acc_largest"] <= 1
    history = Supernet.load(tmp_path / "sn" / "supernet.pt").meta["history"]
    assert all(0 <= h["conflicting_tensors"] <= 1 for h in history) and history[0]["conflicting_tensors"] > 0

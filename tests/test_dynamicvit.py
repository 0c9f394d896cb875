"""DynamicViT's per-image token pruning (`vitnas.slim.dynamic`): the predictor's keep counts, batching,
masked attention, the loss against its formula, training reaching the predictors, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import vitnas
from vitnas import SearchSpace
from vitnas.slim.dynamic import (
    DynamicTrainer,
    DynamicViT,
    default_layers,
    dynamic_arch,
    dynamic_loss,
    from_model,
    keep_counts,
    softmax_with_policy,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(pool: str = "token", depth: int = 4):
    space = SearchSpace.preset("demo")  # 16 px, 4 px patches: 16 patch tokens
    arch = space.make_arch(32, [2] * depth, [2.0] * depth)
    arch = vitnas.Arch.from_dict(arch.to_dict() | {"global_pool": pool})
    torch.manual_seed(0)
    return vitnas.build(arch).eval(), arch


def test_placement_and_counts_follow_dynamicvit():
    assert default_layers(12) == (3, 6, 9)  # the paper's, for DeiT
    assert default_layers(4) == (1, 2, 3) and default_layers(2) == (1, 2)
    assert keep_counts(196, 0.7, 3) == (137, 96, 67)  # rho, rho^2, rho^3 of 14 x 14
    assert keep_counts(16, 0.5, 3) == (8, 4, 2)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_inference_keeps_the_stage_counts_per_image_and_batches(pool):
    model, arch = _model(pool)
    dyn, new = from_model(model, arch, keep_ratio=0.5)
    dyn.eval()
    seen = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for b in dyn.model.blocks]
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        batched = dyn(x)
    for h in hooks:
        h.remove()
    assert dyn.stages == (1, 2, 3) and dyn.counts == (8, 4, 2) and new.keep_tokens == (16, 8, 4, 2)
    assert seen == [17, 9, 5, 3]  # CLS + every patch, then CLS + 8, 4, 2 kept tokens
    with torch.no_grad():
        one_by_one = torch.cat([dyn(x[i:i + 1]) for i in range(5)])
    assert torch.allclose(batched, one_by_one, atol=1e-5)  # each image its own tokens, one count per stage


def test_the_arch_counts_the_predictors_exactly_and_round_trips():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    _, arch = _model()
    new = dynamic_arch(arch, 0.7)
    model = vitnas.build(new).eval()
    assert sum(p.numel() for p in model.parameters()) == vitnas.count_params(new) > vitnas.count_params(arch)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(torch.randn(1, 1, 16, 16))
    assert fc.get_total_flops() // 2 == vitnas.count_flops(new) < vitnas.count_flops(arch)
    assert vitnas.Arch.from_dict(new.to_dict()) == new and new.to_dict()["token_predictors"] is True
    assert "per image" in str(new) and new.key() != new.replace(token_predictors=False).key()
    assert new.replace(keep_tokens=None).token_predictors is False  # no counts, nothing to predict
    with pytest.raises(vitnas.ArchError, match="token_predictors: true only with keep_tokens"):
        arch.replace(token_predictors=True)


def test_masked_keys_get_no_attention_but_each_token_sees_itself():
    logits = torch.randn(2, 3, 5, 5)
    policy = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.float32)[..., None]
    w = softmax_with_policy(logits, policy)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 5), atol=1e-5)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                if policy[b, j, 0] == 0 and i != j:
                    assert w[b, :, i, j].max() < 1e-5
    full = softmax_with_policy(logits, torch.ones(2, 5, 1))
    assert torch.allclose(full, logits.softmax(-1), atol=1e-5)


def test_training_decisions_are_nested_and_cls_is_always_kept():
    model, arch = _model()
    dyn, _ = from_model(model, arch, keep_ratio=0.5)
    dyn.train()
    torch.manual_seed(1)
    logits, feats, last, decisions = dyn(torch.randn(4, 1, 16, 16))
    assert logits.shape == (4, 10) and feats.shape == (4, 16, 32) and len(decisions) == 3
    for a, b in zip(decisions, decisions[1:], strict=False):
        assert torch.all(b <= a)  # a dropped token stays dropped
    assert set(torch.unique(decisions[-1]).tolist()) <= {0.0, 1.0}
    assert torch.equal(last[..., 0], decisions[-1])


def test_the_loss_is_dynamicvits_formula():
    torch.manual_seed(0)
    B, N, C = 4, 6, 8
    logits, t_logits = torch.randn(B, 10), torch.randn(B, 10)
    feats, t_feats = torch.randn(B, N, C), torch.randn(B, N, C)
    decisions = [torch.ones(B, N), (torch.rand(B, N) > 0.5).float()]
    decisions[1][0, 0] = 1.0
    y = torch.randint(0, 10, (B,))
    ce = nn.CrossEntropyLoss()
    loss, parts = dynamic_loss((logits, feats, decisions[1][..., None], decisions), y, t_logits, t_feats, (0.7, 0.49),
                               ce=ce)
    ratio = (((decisions[0].mean(1) - 0.7) ** 2).mean() + ((decisions[1].mean(1) - 0.49) ** 2).mean()) / 2
    kl = (t_logits.softmax(-1) * (t_logits.log_softmax(-1) - logits.log_softmax(-1))).sum(-1).mean()
    kept = decisions[1].bool()
    mse = (feats[kept] - t_feats[kept]).pow(2).mean()
    want = ce(logits, y) + 2.0 * ratio + 0.5 * kl + 0.5 * mse
    assert torch.allclose(loss, want, atol=1e-5)
    assert parts["ratio"] == pytest.approx(float(ratio), abs=1e-6)


def test_training_moves_the_kept_fraction_towards_the_target_and_reaches_the_predictors():
    model, arch = _model()
    dyn, _ = from_model(model, arch, keep_ratio=0.7)  # untrained predictors keep about half at each stage
    trainer = DynamicTrainer(dyn, model, lr=1e-2, amp=False)
    predictors = [p for n, p in dyn.named_parameters() if ".predictor." in n]
    before = [p.detach().clone() for p in predictors]
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    ratios = [trainer.step(x, y)["ratio"] for _ in range(40)]
    assert any(not torch.equal(a, b) for a, b in zip(before, predictors, strict=True))
    assert sum(ratios[-10:]) < 0.5 * sum(ratios[:10])  # the kept fractions approach rho, rho^2, rho^3
    lrs = sorted({g["lr"] for g in trainer.opt.param_groups})
    assert lrs == [pytest.approx(1e-4), pytest.approx(1e-2)]  # the backbone at lr x 0.01
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the caller's model is not frozen


def test_refusals_name_the_key():
    space = SearchSpace.preset("demo")
    arch = vitnas.Arch.from_dict(space.largest().to_dict() | {"rel_pos": True})
    with pytest.raises(ValueError, match=r"^space\.rel_pos: DynamicViT does not combine with relative position"):
        dynamic_arch(arch)
    model, arch = _model()
    with pytest.raises(ValueError, match=r"^layers: increasing block indices in 1\.\.3"):
        dynamic_arch(arch, layers=(0, 2))
    with pytest.raises(ValueError, match=r"^keep_ratio: must be in \(0, 1\)"):
        dynamic_arch(arch, 1.0)
    with pytest.raises(ValueError, match=r"^arch: no token predictors"):
        DynamicViT(model, arch)


# ---- the slim stage (`slim.method: dynamicvit`) and what follows it -----------------------------
def test_slim_stage_writes_a_model_that_prunes_per_image_and_retrain_trains_it(digits_dir, supernet_file, tmp_path):
    import json

    from vitnas.config import parse_params
    from vitnas.models.model_dir import load_model
    from vitnas.stages import retrain as retrain_stage
    from vitnas.stages import slim as stage
    from vitnas.train import batches, evaluate

    arch = vitnas.Arch.create(embed_dim=48, depth=3, num_heads=[4, 2, 3], mlp_ratio=[4.0, 3.0, 2.0], head_dim=16,
                              patch_size=4, img_size=16, in_chans=1, num_classes=10)
    (tmp_path / "best_arch.json").write_text(arch.to_json())
    p = parse_params({"tracking": {"enabled": False},
                      "slim": {"method": "dynamicvit", "token_keep_ratio": 0.5, "epochs": 1, "batch_size": 128},
                      "retrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 128, "registered_model": None}})
    out = tmp_path / "slim"
    m = stage.run(p, digits_dir, supernet_file, tmp_path / "best_arch.json", out, progress=False)
    after = vitnas.Arch.load(out / "arch.json")
    assert after.token_predictors and after.keep_tokens == (16, 8, 4)  # blocks 1 and 2 (depth 3): 8, then 4
    assert m["flops_after"] == vitnas.count_flops(after) < m["flops_before"] == vitnas.count_flops(arch)
    assert json.loads((out / "metrics.json").read_text()) == m
    model, loaded = load_model(out)
    assert loaded == after
    x, y = PreparedDataTensors(digits_dir)
    acc = evaluate(model.eval(), batches(x, y, 256), torch.device("cpu"))["acc"]
    assert acc == pytest.approx(m["val_acc_after"])  # the saved model is the one measured
    r = retrain_stage.run(p, digits_dir, None, out, tmp_path / "retrain", progress=False)
    assert vitnas.Arch.load(tmp_path / "retrain" / "arch.json") == after and 0 <= r["test_acc"] <= 1


def test_slim_stage_refuses_relative_position_naming_the_key(digits_dir, tmp_path):
    from vitnas.config import parse_params
    from vitnas.errors import ConfigError
    from vitnas.slim import save_model
    from vitnas.stages import slim as stage

    arch = vitnas.Arch.create(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, head_dim=16, patch_size=4,
                              img_size=16, in_chans=1, num_classes=10, rel_pos=True)
    save_model(vitnas.build(arch), arch, tmp_path / "model")
    p = parse_params({"tracking": {"enabled": False}, "slim": {"method": "dynamicvit", "token_keep_ratio": 0.7}})
    with pytest.raises(ConfigError, match=r"^space\.rel_pos: DynamicViT does not combine"):
        stage.run(p, digits_dir, None, tmp_path / "model", tmp_path / "slim", progress=False)
    assert not (tmp_path / "slim").exists()
    with pytest.raises(ConfigError, match=r"^slim\.token_keep_ratio: slim\.method dynamicvit keeps rho"):
        parse_params({"slim": {"method": "dynamicvit"}})


def PreparedDataTensors(data_dir):
    from vitnas.data import PreparedData

    return PreparedData(data_dir).eval_tensors("val")


def test_a_dynamic_model_loads_with_every_token_for_another_input_size(tmp_path):
    from vitnas.models.model_dir import load_model
    from vitnas.slim import save_model

    _, arch = _model()
    new = dynamic_arch(arch, 0.7)
    torch.manual_seed(0)
    save_model(vitnas.build(new), new, tmp_path / "m")
    model, loaded = load_model(tmp_path / "m", all_tokens=True)  # what transfer at another img_size does
    assert loaded.keep_tokens is None and not loaded.token_predictors
    assert not any(".predictor." in k for k in model.state_dict())

"""timm-native models: pretrained_cfg on every built model, timm's hub layout in model directories,
`timm.create_model("local-dir:DIR", pretrained=True)` giving the exact network, cheap `import vitnas`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from timm.data import resolve_model_data_config

import vitnas
from vitnas import Arch
from vitnas.errors import ArtifactError
from vitnas.models import hub
from vitnas.models.model_dir import load_model, save_model

DIGITS = {"name": "digits", "mean": [0.305], "std": [0.376], "classes": [str(i) for i in range(10)]}
SMALL = dict(img_size=16, patch_size=4, in_chans=1, num_classes=10)


def _archs() -> dict[str, Arch]:
    return {
        "uniform": Arch.create(embed_dim=32, depth=2, num_heads=2, head_dim=16, mlp_ratio=2.0, **SMALL),
        "per-layer": Arch.create(embed_dim=32, depth=3, num_heads=[2, 1, 3], mlp_hidden=[40, 96, 24], **SMALL),
        "token-pruned": Arch.create(embed_dim=32, depth=2, num_heads=[2, 1], mlp_ratio=[2.0, 3.0],
                                    keep_tokens=[10, 6], **SMALL),
        "relpos-avg": Arch.create(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, rel_pos=True,
                                  global_pool="avg", norm_eps=1e-5, **SMALL),
        "glit": Arch.create(embed_dim=48, depth=2, units=3, local_units=[1, 3], qkv_ratio=1.0, kernel_size=3,
                            local_expansion=2.0, mlp_ratio=2.0, **SMALL),
    }


def test_built_models_carry_their_preprocessing():
    a = _archs()["per-layer"]
    cfg = resolve_model_data_config(vitnas.build(a, dataset=DIGITS))
    assert cfg == {"input_size": (1, 16, 16), "interpolation": "bilinear", "mean": (0.305,), "std": (0.376,),
                   "crop_pct": 1.0, "crop_mode": "center"}
    m = vitnas.build(a)  # no data given: input from the arch, ImageNet statistics averaged to grey
    assert m.pretrained_cfg["input_size"] == (1, 16, 16) and m.pretrained_cfg["num_classes"] == 10
    assert resolve_model_data_config(m)["crop_pct"] == 1.0
    rgb = vitnas.build(a.replace(in_chans=3))
    assert resolve_model_data_config(rgb)["mean"] == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name", list(_archs()))
def test_timm_local_dir_builds_the_exact_model_with_its_weights(tmp_path, name):
    torch.manual_seed(0)
    a = _archs()[name]
    model = vitnas.build(a).eval()
    save_model(model, a, tmp_path, dataset=DIGITS)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == ("vit_base_patch16_224" if name == "uniform" else "vitnas_vit")
    assert config["pretrained_cfg"]["tag"] == "digits" and config["pretrained_cfg"]["label_names"][3] == "3"

    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    data = resolve_model_data_config(loaded)
    assert tuple(data["input_size"]) == (1, 16, 16) and list(data["mean"]) == [0.305]
    assert data["interpolation"] == "bilinear" and data["crop_pct"] == 1.0

    # timm's fine-tuning idiom: a new head, every other weight kept
    five = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, num_classes=5).eval()
    assert five.head.out_features == 5
    with torch.no_grad():
        assert torch.equal(five.forward_features(x), model.forward_features(x))


def test_vitnas_models_load_back_with_their_saved_preprocessing(tmp_path):
    a = _archs()["per-layer"]
    save_model(vitnas.build(a), a, tmp_path, dataset=DIGITS)
    model, arch = load_model(tmp_path)
    assert arch == a and resolve_model_data_config(model)["std"] == [0.376]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"config.json: corrupt model config \(not valid JSON"):
        load_model(tmp_path)


def test_only_uniform_archs_are_written_as_plain_timm():
    archs = _archs()
    assert hub.timm_model_args(archs["uniform"])["mlp_ratio"] == 2.0
    assert all(hub.timm_model_args(a) is None for k, a in archs.items() if k != "uniform")
    # heads that do not split the embedding evenly need vitnas's free head dim
    assert hub.timm_model_args(Arch.create(embed_dim=32, depth=1, num_heads=2, head_dim=8, mlp_ratio=2.0,
                                           **SMALL)) is None


def test_fixed_input_archs_refuse_another_size_but_not_another_head():
    a = _archs()["token-pruned"]
    with pytest.raises(vitnas.ArchError, match="img_size: this arch"):
        timm.create_model("vitnas_vit", arch=a.to_dict(), img_size=32)
    assert timm.create_model("vitnas_vit", arch=a.to_dict(), num_classes=3).head.out_features == 3
    grown = timm.create_model("vitnas_vit", arch=_archs()["per-layer"].to_dict(), img_size=32)
    assert grown.patch_embed.img_size == (32, 32)


def test_import_vitnas_is_cheap_and_registers_with_timm_when_timm_loads():
    code = ("import sys, vitnas; heavy = [m for m in ('torch', 'timm') if m in sys.modules]; "
            "import timm; print(heavy, timm.is_model('vitnas_vit'), vitnas.Arch.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "True", "Arch"]

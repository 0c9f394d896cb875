"""Published architectures, so users can retrain, slim or compare against them.

AutoFormer (Chen et al., ICCV 2021) and TF-TAS (Zhou et al., CVPR 2022) subnets use a fixed head
dim of 64; DeiT (Touvron et al., 2021) uses embed/heads. GLiT-Tiny (Chen et al., ICCV 2021) is
the searched global-local arch, block by block from the paper and its public model definition.
All at 224 px, patch 16, 1000 classes; per-layer lists are first layer first.

AutoFormer and TF-TAS archs are AutoFormer's model as its scripts run it (`--gp
--relative_position`, `nn.LayerNorm`): average pooling of the patch tokens after the final norm,
2-D relative position clipped at 14, LayerNorm eps 1e-5, so `count_params` gives AutoFormer's own
counts. DeiT and GLiT keep timm's ViT (CLS token, no relative position, eps 1e-6).
"""

_IMAGENET = {"patch_size": 16, "img_size": 224, "in_chans": 3, "num_classes": 1000}
AUTOFORMER_MODEL = {"global_pool": "avg", "rel_pos": True, "rel_pos_clip": 14, "norm_eps": 1e-5}


def _vit(embed: int, depth: int, heads, mlp, head_dim: int = 64, autoformer: bool = True) -> dict:
    return {"embed_dim": embed, "depth": depth, "num_heads": heads, "mlp_ratio": mlp,
            "head_dim": head_dim, **_IMAGENET, **(AUTOFORMER_MODEL if autoformer else {})}


def _glit_tiny() -> dict:
    # (G attention heads, e_v, FFN) | (L = 3 - G local units, kernel, e_c); mixed blocks use e_v 1,
    # kernel 31 and all-local blocks FFN 4, the values GLiT's space fixes for them.
    blocks = [  # G, e_v, ffn, k, e_c
        (3, 0.5, 4, 0, 0), (0, 0, 4, 31, 2), (1, 1, 6, 31, 4), (3, 1, 4, 0, 0),
        (0, 0, 4, 45, 4), (1, 1, 6, 31, 4), (3, 1, 2, 0, 0), (1, 1, 2, 31, 4),
        (0, 0, 4, 45, 4), (3, 1, 4, 0, 0), (0, 0, 4, 31, 4), (3, 2, 6, 0, 0),
    ]
    return {"embed_dim": 192, "depth": 12, "units": 3, "local_units": [3 - b[0] for b in blocks],
            "qkv_ratio": [b[1] for b in blocks], "mlp_ratio": [float(b[2]) for b in blocks],
            "kernel_size": [b[3] for b in blocks], "local_expansion": [b[4] for b in blocks], **_IMAGENET}


PUBLISHED: dict[str, dict] = {
    "autoformer-t": _vit(192, 13, [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3],
                         [3.5, 3.5, 3, 3.5, 3, 3, 4, 4, 3.5, 4, 3.5, 4, 3.5]),
    "autoformer-s": _vit(384, 13, [6, 6, 5, 7, 5, 5, 5, 6, 6, 7, 7, 6, 7],
                         [3, 3.5, 3, 3.5, 4, 4, 4, 4, 4, 4, 4, 3.5, 4]),
    "autoformer-b": _vit(576, 14, [9, 9, 9, 9, 9, 10, 9, 9, 10, 9, 10, 9, 9, 10],
                         [3.5, 3.5, 4, 3.5, 4, 3.5, 3.5, 3, 4, 4, 3, 4, 3, 3.5]),
    "tf-tas-t": _vit(192, 13, [4, 3, 3, 3, 3, 4, 4, 3, 3, 3, 4, 3, 3],
                     [3.5, 4, 3.5, 3.5, 4, 3.5, 3.5, 3.5, 4, 4, 4, 4, 3.5]),
    "tf-tas-s": _vit(384, 14, [6, 6, 6, 6, 7, 6, 5, 7, 5, 5, 5, 7, 6, 7],
                     [4, 4, 4, 3, 4, 3, 3, 3.5, 4, 3.5, 3.5, 4, 3, 3.5]),
    "tf-tas-b": _vit(576, 15, [9, 10, 10, 10, 10, 10, 10, 9, 9, 10, 9, 9, 9, 9, 9],
                     [3, 3.5, 4, 4, 3, 4, 3, 3, 3.5, 3, 3, 3.5, 4, 3, 4]),
    "deit-tiny": _vit(192, 12, 3, 4.0, head_dim=64, autoformer=False),
    "deit-small": _vit(384, 12, 6, 4.0, head_dim=64, autoformer=False),
    "deit-base": _vit(768, 12, 12, 4.0, head_dim=64, autoformer=False),
    "glit-tiny": _glit_tiny(),
}

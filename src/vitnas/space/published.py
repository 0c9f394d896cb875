"""Published architectures, so users can retrain, slim or compare against them.

AutoFormer (Chen et al., ICCV 2021) and TF-TAS (Zhou et al., CVPR 2022) subnets use a fixed head
dim of 64; DeiT (Touvron et al., 2021) uses embed/heads. All at 224 px, patch 16, 1000 classes;
per-layer lists are first layer first.
"""

_IMAGENET = {"patch_size": 16, "img_size": 224, "in_chans": 3, "num_classes": 1000}


def _vit(embed: int, depth: int, heads, mlp, head_dim: int = 64) -> dict:
    return {"embed_dim": embed, "depth": depth, "num_heads": heads, "mlp_ratio": mlp,
            "head_dim": head_dim, **_IMAGENET}


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
    "deit-tiny": _vit(192, 12, 3, 4.0, head_dim=64),
    "deit-small": _vit(384, 12, 6, 4.0, head_dim=64),
    "deit-base": _vit(768, 12, 12, 4.0, head_dim=64),
}

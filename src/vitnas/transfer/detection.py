"""Detection transfer, ViTDet style: a plain ViT as the backbone of a torchvision detector.

ViTDet (Li et al. 2022) keeps the ViT plain (one feature map at the patch stride) and builds a
*simple feature pyramid* from that last map alone: transposed convs up, max-pool down, then a
1x1 and a 3x3 conv with LayerNorm per level. Here that pyramid feeds torchvision's Faster R-CNN
(or RetinaNet): anchors, RPN, RoIAlign, heads, losses and NMS are all torchvision's.

The ViT's position embedding is resampled (timm `resample_abs_pos_embed`) from its
classification grid to the detector's input grid once, and again on the fly for inputs of
another shape, so any image size that is a multiple of the patch size works.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from functools import partial

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader

from vitnas.train import make_optimizer, make_scheduler
from vitnas.train.loop import check_finite
from vitnas.transfer.coco import CocoDetection, collate, evaluate_coco

DETECTORS = ("faster_rcnn", "retinanet")
_SCALE_LAYERS = (4.0, 2.0, 1.0, 0.5, 0.25)


def pyramid_strides(patch_size: int, min_size: int) -> tuple[int, ...]:
    """The pyramid's strides: FPN's 4..32 where the single ViT map reaches them (x4 up to /4 down)
    and the level still has at least 4x4 cells on the detector's input."""
    out = tuple(s for s in (4, 8, 16, 32) if patch_size / s in _SCALE_LAYERS and min_size // s >= 4)
    if not out:
        raise ValueError(f"no pyramid level for patch size {patch_size} on {min_size}px inputs")
    return out


def anchor_sizes(strides: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Three anchor sizes per level around 4x its stride (x 2^-1/2, 1, 2^1/2): objects of one
    level's size are then matched there, and small canvases get small anchors (not COCO's 32-512)."""
    return tuple(tuple(int(round(4 * s * 2 ** (k / 2))) for k in (-1, 0, 1)) for s in strides)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from one map of `in_channels` at the patch stride: per level, a rescale
    (2x2 transposed convs for x2/x4, max-pool for /2, /4) then 1x1 + 3x3 convs with LayerNorm2d."""

    def __init__(self, in_channels: int, out_channels: int, scales: Sequence[float]) -> None:
        super().__init__()
        c = in_channels
        self.levels = nn.ModuleList()
        for scale in scales:
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(c, c // 2, 2, stride=2), LayerNorm2d(c // 2), nn.GELU(),
                          nn.ConvTranspose2d(c // 2, max(c // 4, 1), 2, stride=2)]
                dim = max(c // 4, 1)
            elif scale == 2.0:
                layers, dim = [nn.ConvTranspose2d(c, c // 2, 2, stride=2)], c // 2
            elif scale == 1.0:
                layers, dim = [], c
            elif scale in (0.5, 0.25):
                k = int(round(1 / scale))
                layers, dim = [nn.MaxPool2d(k, stride=k)], c
            else:
                raise ValueError(f"pyramid scale {scale} not supported (one of {_SCALE_LAYERS})")
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
            self.levels.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [level(x) for level in self.levels]


class ViTDetBackbone(nn.Module):
    """A timm ViT (class token, absolute position embedding) as a multi-scale detection backbone:
    the last block's patch tokens (CLS dropped) as a 2-D map at the patch stride, then the simple
    feature pyramid. Returns an OrderedDict {"p2": stride 4, "p3": stride 8, ...} of
    `out_channels` maps, what torchvision's detectors expect from a backbone."""

    def __init__(self, vit: VisionTransformer, *, input_size: int, strides: Sequence[int],
                 out_channels: int = 64) -> None:
        super().__init__()
        if vit.cls_token is None or vit.pos_embed is None or vit.num_prefix_tokens != 1 or vit.no_embed_class:
            raise ValueError("ViTDetBackbone needs a ViT with one class token and an absolute position embedding")
        if any(getattr(b, "token_rows", None) is not None for b in vit.blocks):
            raise ValueError("ViTDetBackbone needs every token (load a token-pruned model with all_tokens=True)")
        patch = vit.patch_embed.patch_size[0]
        if input_size % patch:
            raise ValueError(f"detector input size {input_size} is not a multiple of the patch size {patch}")
        vit.reset_classifier(0)  # the classification head is not part of a backbone
        vit.set_input_size(img_size=(input_size, input_size))  # resample pos embed to the detector's grid
        self.vit, self.patch_size, self.strides = vit, patch, tuple(strides)
        self.grid = tuple(vit.patch_embed.grid_size)
        self.pyramid = SimpleFeaturePyramid(vit.embed_dim, out_channels, [patch / s for s in self.strides])
        self.names = [f"p{int(math.log2(s))}" for s in self.strides]
        self.out_channels = out_channels

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The ViT's last-block patch tokens as [B, C, H/patch, W/patch]."""
        vit = self.vit
        x = vit.patch_embed.proj(x)
        b, _, gh, gw = x.shape
        tokens = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
        pos = vit.pos_embed
        if (gh, gw) != self.grid:
            pos = resample_abs_pos_embed(pos, new_size=[gh, gw], old_size=list(self.grid), num_prefix_tokens=1)
        tokens = vit.pos_drop(torch.cat([vit.cls_token.expand(b, -1, -1), tokens], dim=1) + pos)
        tokens = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(tokens))))
        return tokens[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.names, self.pyramid(self.feature_map(x)), strict=True))


def build_detector(vit: VisionTransformer, num_classes: int, *, detector: str = "faster_rcnn",
                   min_size: int, max_size: int | None = None, image_mean: Sequence[float],
                   image_std: Sequence[float], fpn_channels: int = 64) -> nn.Module:
    """torchvision Faster R-CNN or RetinaNet on a ViTDet backbone; `num_classes` without background.

    The detector's transform resizes inputs to `min_size` (short side, long side capped at
    `max_size`), not torchvision's 800 px default, and pads to a multiple of the coarsest stride
    and the patch size. The Faster R-CNN box head is torchvision's TwoMLPHead at 256 wide
    (1024 by default: far more than a small ViT's features need).
    """
    from torchvision.models.detection import FasterRCNN, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    max_size = max_size or min_size
    patch = vit.patch_embed.patch_size[0]
    strides = pyramid_strides(patch, min_size)
    pad = math.lcm(patch, max(strides))
    backbone = ViTDetBackbone(vit, input_size=-(-min_size // pad) * pad, strides=strides,
                              out_channels=fpn_channels)
    sizes = anchor_sizes(strides)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    common = dict(min_size=min_size, max_size=max_size, image_mean=list(image_mean), image_std=list(image_std))
    if detector == "faster_rcnn":
        rep = 256
        # proposal and RoI sample counts scale with the input area: torchvision's defaults (2000
        # proposals, 512 RoIs per image) at COCO sizes, ~150 / 32 on 64 px canvases, where NMS
        # and RoIAlign's backward on the default counts would cost most of the step on a CPU.
        # One RoIAlign sample per bin: the pyramid's cells are already about a bin's size here.
        cells = min_size * max_size / 256
        post = int(min(2000, max(150, cells)))
        model = FasterRCNN(
            backbone, num_classes=None, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(backbone.names, output_size=7, sampling_ratio=1,
                                            canonical_scale=4 * 16, canonical_level=4),
            box_head=TwoMLPHead(fpn_channels * 7 * 7, rep), box_predictor=FastRCNNPredictor(rep, num_classes + 1),
            rpn_pre_nms_top_n_train=min(2000, 2 * post), rpn_post_nms_top_n_train=post,
            rpn_pre_nms_top_n_test=min(1000, post), rpn_post_nms_top_n_test=max(100, post // 2),
            box_batch_size_per_image=int(min(512, max(32, cells / 8))), **common)
    else:
        # torchvision's RetinaNet: sigmoid classes 0..num_classes-1, labels here are 1..K (0 unused)
        model = RetinaNet(backbone, num_classes=num_classes + 1, anchor_generator=anchors, **common)
    model.transform.size_divisible = pad
    # AdamW (timm) leaves out of weight decay what the model names here, as for the plain ViT
    model.no_weight_decay = partial(frozenset, {f"backbone.vit.{n}" for n in vit.no_weight_decay()})  # picklable
    return model


def train_detector(model: nn.Module, data: CocoDetection, *, epochs: int, batch_size: int, lr: float,
                   weight_decay: float = 0.05, warmup_epochs: int = 1, min_lr: float = 1e-6, seed: int = 0,
                   device: torch.device | str = "cpu", progress: bool = True,
                   on_epoch=None) -> list[dict[str, float]]:
    """Fine-tune the whole detector (backbone included): AdamW, per-step warmup + cosine, the
    detector's own summed losses. Returns per-epoch {loss, seconds}."""
    from vitnas.progress import progress as progress_bar

    device = torch.device(device)
    model.to(device).train()
    opt = make_optimizer(model, lr, weight_decay)
    steps = max(1, math.ceil(len(data) / batch_size))
    sched = make_scheduler(opt, epochs=epochs, steps_per_epoch=steps, warmup_epochs=warmup_epochs, min_lr=min_lr)
    history = []
    step = 0
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g, collate_fn=collate)
        t0, total, n = time.time(), 0.0, 0
        bar = progress_bar(loader, desc=f"detection epoch {epoch + 1}/{epochs}", unit="steps", lines=False,
                           enabled=progress)
        for images, targets in bar:
            images = [x.to(device) for x in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = model(images, targets)
            loss = sum(losses.values())
            check_finite(loss, f"detection epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            sched.step_update(step)
            total += loss.item() * len(images)
            n += len(images)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"loss": total / max(n, 1), "seconds": time.time() - t0})
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history


@torch.no_grad()
def predict(model: nn.Module, data: CocoDetection, *, batch_size: int = 16, device: torch.device | str = "cpu",
            indices: Iterable[int] | None = None) -> list[dict]:
    """COCO result dicts of the detector on `data` (or the images at `indices`)."""
    device = torch.device(device)
    model.to(device).eval()
    idx = list(range(len(data))) if indices is None else list(indices)
    results = []
    for i in range(0, len(idx), batch_size):
        chunk = idx[i:i + batch_size]
        outs = model([data[j][0].to(device) for j in chunk])
        for j, o in zip(chunk, outs, strict=True):
            results += data.to_coco_results(data.image_ids[j], o["boxes"].cpu(), o["scores"].cpu(), o["labels"].cpu())
    return results


def evaluate_detector(model: nn.Module, data: CocoDetection, *, batch_size: int = 16,
                      device: torch.device | str = "cpu") -> tuple[dict[str, float], list[dict]]:
    """(COCOeval box metrics, the detections) of the detector on every image of `data`."""
    dets = predict(model, data, batch_size=batch_size, device=device)
    return evaluate_coco(data.coco, dets, image_ids=data.image_ids), dets

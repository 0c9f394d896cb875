"""Typed, validated view of params.yaml.

Every problem is reported before any work starts, as one line that names the key path
(``search.params_max: must be > search.params_min``). Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

from vitnas.errors import ConfigError, VitnasError
from vitnas.files import read_text
from vitnas.space import ArchError, SearchSpace

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def _parse_count(v: Any) -> Any:
    """Counts may be written 5.8M, 1.3G, 500k or 6e6 (YAML reads the last as a string)."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", v)
        if not m:
            raise ValueError("expected a number, optionally with a k/M/G suffix (e.g. 5.8M)")
        return float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    return v


def _reject_non_finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


Count = Annotated[float, BeforeValidator(_parse_count), AfterValidator(_reject_non_finite), Field(gt=0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy and torch seeds are 32-bit
Fraction = Annotated[float, Field(gt=0, lt=1)]


def _split_size(v: Any) -> float | int:
    """A fraction in (0, 1) or (an integer) an image count, as sklearn's `test_size`."""
    if isinstance(v, int) and not isinstance(v, bool):
        if not 1 <= v <= 1_000_000_000:
            raise ValueError("an image count must be in 1..1,000,000,000")
        return v
    if isinstance(v, float):
        if not 0 < v < 1:
            raise ValueError("a fraction must be > 0 and < 1 (or an integer: that many images)")
        return v
    raise ValueError("expected a fraction in (0, 1) or an integer image count")


SplitSize = Annotated[float | int, PlainValidator(_split_size, json_schema_input_type=float | int)]
MAX_COUNT = 1_000_000_000  # any count: far above real use, so a typo (1e15) is one line, not a run
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
PosInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
Epochs = Annotated[int, Field(gt=0, le=MAX_EPOCHS)]
Batch = Annotated[int, Field(gt=0, le=MAX_BATCH)]
NonNegFloat = Annotated[float, Field(ge=0)]
_PAIR = Field(min_length=2, max_length=2)
MAX_POPULATION = 100_000  # documented caps: evolution keeps every candidate of a generation in memory
MAX_CANDIDATES = 1_000_000
MAX_GENERATIONS = 100_000


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class AugmentConfig(_Section):
    """Training-time augmentation, passed to timm's `create_transform`."""

    scale: Annotated[list[Annotated[float, Field(gt=0, le=1)]], _PAIR] = [0.08, 1.0]
    ratio: Annotated[list[Annotated[float, Field(gt=0)]], _PAIR] = [0.75, 1.3333]
    hflip: Annotated[float, Field(ge=0, le=1)] = 0.5
    color_jitter: NonNegFloat = 0.4
    auto_augment: str | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "random"] = "bilinear"
    re_prob: Annotated[float, Field(ge=0, le=1)] = 0.0


class DataConfig(_Section):
    dataset: Literal["digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "imagefolder"] = "digits"
    root: str | None = None
    download: bool = False
    img_size: Annotated[int, Field(gt=0, le=4096)] = 16
    # A fraction of the images, or (an integer) that many images: at scale, a fixed val set such as
    # 10000 keeps search and slimming (which hold val in memory) fast and bounded.
    val_fraction: SplitSize = 0.1
    test_fraction: SplitSize = 0.2
    max_train_images: PosInt | None = None  # at most this many train images (seeded, stratified subset); null: all
    seed: Seed = 0
    augment: AugmentConfig = AugmentConfig()
    # Shards (vitnas.data.shards): null (arrays / file lists as today), "out" (tar shards inside the
    # stage's output) or an s3:// prefix (the output keeps the manifest and index only).
    shards: str | None = None
    # A DVC-tracked dataset: data.root is then a path inside this git repository (URL or local
    # path), read through dvc.api at dvc_rev (a branch, tag or commit; null: the default branch).
    dvc_repo: str | None = None
    dvc_rev: str | None = None
    store_size: Annotated[int, Field(ge=8, le=4096)] | None = None  # pre-resize file images (shorter side)
    shard_size: Annotated[int, Field(gt=0, le=1_000_000)] = 1000  # images per shard
    skip_bad_images: bool = False  # leave corrupt or non-image files out (counted) instead of stopping
    # How training epochs read shards (read by the training stages, not the data stage): null, by
    # random access (a full seeded permutation each epoch, as for arrays); a number, streamed
    # (vitnas.data.stream: shards in a seeded order, a run of images per read, shuffled within
    # windows of this many images held per DataLoader worker): for a split bigger than a node's disk.
    shuffle_buffer: PosInt | None = None
    # Image folders: channels (1: greyscale, 3: RGB) and normalisation; null: 3 and ImageNet's mean/std
    # (array datasets: their own channels, mean/std from the train split unless given).
    in_chans: Annotated[int, Field(ge=1, le=64)] | None = None
    mean: list[Annotated[float, Field(ge=-10, le=10)]] | None = None
    std: list[Annotated[float, Field(gt=0, le=10)]] | None = None


class SpaceConfig(_Section):
    """A preset, optionally with some of its choices overridden, or a fully custom space."""

    preset: str | None = "demo"
    embed_dim: list[PosInt] | None = None
    depth: list[PosInt] | None = None
    num_heads: list[PosInt] | None = None
    mlp_ratio: list[Annotated[float, Field(gt=0)]] | None = None
    head_dim: PosInt | None = None
    patch_size: PosInt | None = None
    # GLiT spaces (glit-tiny, glit-demo, or preset null with units): global-local blocks
    units: PosInt | None = None
    local_units: list[Annotated[int, Field(ge=0)]] | None = None
    qkv_ratio: list[Annotated[float, Field(gt=0)]] | None = None
    kernel_size: list[PosInt] | None = None
    local_expansion: list[Annotated[float, Field(gt=0)]] | None = None
    glit_grid: Literal["paper", "full"] | None = None
    # The network around the widths (default: the preset's; AutoFormer's presets avg / true / 14 / 1e-5)
    global_pool: Literal["token", "avg"] | None = None
    rel_pos: bool | None = None
    rel_pos_clip: Annotated[int, Field(gt=0, le=1024)] | None = None
    norm_eps: Annotated[float, Field(gt=0, lt=1)] | None = None


class TrainRecipe(_Section):
    """The timm/DeiT recipe pieces shared by supernet training and retraining."""

    epochs: Epochs = 30
    batch_size: Batch = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    min_lr: NonNegFloat = 1e-5
    weight_decay: NonNegFloat = 0.05
    warmup_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 2
    mixup: NonNegFloat = 0.0
    cutmix: NonNegFloat = 0.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    drop_path: Annotated[float, Field(ge=0, lt=1)] = 0.1
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    amp: bool = True
    workers: Annotated[int, Field(ge=0)] = 0
    seed: Seed = 0


class SupernetConfig(TrainRecipe):
    sampling: Literal["uniform", "sandwich", "nasvit"] = "uniform"
    sandwich_random: Annotated[int, Field(ge=0)] = 2
    # nasvit: epochs the smaller subnets learn from the labels before in-place distillation starts
    # (a cold teacher is what fails at short schedules); None: warmup_epochs
    kd_warmup_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] | None = None
    # NASViT's switchable layer scaling: per-channel branch scales per (depth, embed width), starting here
    layer_scale: Annotated[float, Field(gt=0, le=1)] | None = None
    val_random_subnets: Annotated[int, Field(ge=0)] = 3
    pretrained: str | None = None
    hierarchical: bool = False  # GLiT: train the level-1 supernet of search.strategy hierarchical
    bn_calib_images: PosInt = 256  # GLiT: train images that recalibrate BatchNorm before validating subnets

    @property
    def kd_warmup(self) -> int:
        """Epochs of the nasvit label warm-up: `kd_warmup_epochs`, else `warmup_epochs`."""
        return self.warmup_epochs if self.kd_warmup_epochs is None else self.kd_warmup_epochs


class ProxyConfig(_Section):
    num_candidates: Annotated[int, Field(gt=0, le=MAX_CANDIDATES)] = 200
    proxies: Annotated[list[str], Field(min_length=1)] = ["dss", "dss_rank", "params", "flops"]
    batch_size: Batch = 32  # train images for the data-dependent proxies (dss uses an all-ones input)
    top_k: PosInt = 10
    seed: Seed = 0


class SearchConfig(_Section):
    strategy: Literal["evolution", "random", "hierarchical", "greedy"] = "evolution"
    fitness: Literal["supernet", "proxy", "hybrid"] = "supernet"
    proxy: str = "dss"
    population: Annotated[int, Field(gt=0, le=MAX_POPULATION)] = 50
    parents: PosInt = 10
    mutations: Annotated[int, Field(ge=0)] = 25
    crossovers: Annotated[int, Field(ge=0)] = 25
    generations: Annotated[int, Field(gt=0, le=MAX_GENERATIONS)] = 20
    mutation_prob: Annotated[float, Field(ge=0, le=1)] = 0.2
    resample_prob: Annotated[float, Field(ge=0, le=1)] = 0.4
    params_min: Count | None = None
    params_max: Count | None = None
    flops_min: Count | None = None
    flops_max: Count | None = None
    latency_max_ms: Annotated[float, Field(gt=0)] | None = None
    latency_table: str | None = None
    hybrid_ratio: Annotated[int, Field(ge=1)] = 4  # hybrid: proxy-score this many x candidates per supernet eval
    eval_batch_size: Batch = 256
    seed: Seed = 0
    level2_epochs: Epochs | None = None  # hierarchical: level-2 supernet epochs (None: supernet.epochs)
    bn_calib_images: PosInt = 256  # GLiT: train images that recalibrate BatchNorm for each candidate
    greedy_score: Literal["per_cost", "mes"] | None = None  # greedy: EfficientFormer V1 (per_cost) or V2 (mes)
    mes_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.5  # greedy_score mes: latency exponent; params 1 - it


class SlimConfig(_Section):
    # vit-slim: soft masks on widths (and tokens) cut to a budget; dynamicvit: per-image token
    # predictors keeping token_keep_ratio ** k of the patch tokens after the k-th (DynamicViT)
    method: Literal["vit-slim", "dynamicvit"] = "vit-slim"
    target_flops_ratio: Annotated[float, Field(gt=0, le=1)] | None = None
    target_params_ratio: Annotated[float, Field(gt=0, le=1)] | None = None
    epochs: Epochs = 10
    lr: Annotated[float, Field(gt=0)] = 5e-4
    batch_size: Batch = 64
    w_attn: NonNegFloat = 2e-4
    w_mlp: NonNegFloat = 5e-5
    w_token: NonNegFloat = 1e-4
    token_keep_ratio: Annotated[float, Field(gt=0, le=1)] | None = None  # None: keep every token
    round_to: PosInt = 1
    distill: bool = True
    # the last fade_epochs epochs fade out what the budget drops (None: half of epochs; 0: ViT-Slim's cut
    # of untouched masks at the end); cut_tolerance: the val accuracy the physical cut may lose
    fade_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] | None = None
    cut_tolerance: Annotated[float, Field(ge=0, le=1)] = 0.01
    seed: Seed = 0

    @property
    def fade(self) -> int:
        """Epochs of fading: `fade_epochs`, else half of `epochs`."""
        return self.epochs // 2 if self.fade_epochs is None else self.fade_epochs

    def check_fade(self) -> None:
        if self.fade > self.epochs:
            raise ConfigError(f"slim.fade_epochs: {self.fade} is more than slim.epochs ({self.epochs})")

    @property
    def target(self) -> tuple[str, float]:
        """("flops" | "params", fraction kept); a 60% FLOPs target when neither is set."""
        if self.target_params_ratio is not None:
            return "params", self.target_params_ratio
        return "flops", self.target_flops_ratio if self.target_flops_ratio is not None else 0.6


class RetrainConfig(TrainRecipe):
    epochs: Epochs = 60  # digits demo: >= 95% test from scratch too (30 reached ~94-96%)
    lr: Annotated[float, Field(gt=0)] = 2e-3
    warmup_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 5
    init: Literal["inherit", "scratch"] = "inherit"
    distill: bool = False
    teacher: str | None = None  # a model directory; default teacher: the supernet's largest subnet
    distill_alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    distill_temperature: Annotated[float, Field(gt=0)] = 1.0
    keep: Literal["best", "last"] = "best"  # which epoch's weights are saved: best val accuracy or last
    registered_model: Annotated[str, Field(min_length=1)] | None = "vitnas"


CLASSIFICATION_TARGETS = ("cifar10", "cifar100", "digits-cifar")
DETECTION_TARGETS = ("coco", "digits-coco")
# Task-specific keys: null means "this task's default" (filled in on load) and they must stay null
# on a target of the other task. Defaults are filled, not declared, so that a dumped and re-parsed
# config (the Kubeflow pipeline does that) is still valid.
_TASK_DEFAULTS = {
    "classification": {"label_smoothing": 0.1},
    "detection": {"detector": "faster_rcnn", "fpn_channels": 64},
}
_TASK_KEYS = {"classification": ("img_size", "label_smoothing"),
              "detection": ("detector", "canvas_size", "min_size", "max_size", "fpn_channels")}


TargetName = Literal["cifar10", "cifar100", "digits-cifar", "coco", "digits-coco"]


class TransferTarget(_Section):
    """One transfer dataset: fine-tune the retrained model on it and report top-1 or COCO AP."""

    name: TargetName  # its key in transfer.targets
    root: str | None = None  # cifar10/cifar100/coco; digits-* live in the data stage's output
    epochs: Epochs = 5
    batch_size: Batch = 64
    lr: Annotated[float, Field(gt=0)] = 5e-4
    min_lr: NonNegFloat = 1e-6
    weight_decay: NonNegFloat = 0.05
    warmup_epochs: Annotated[int, Field(ge=0, le=MAX_EPOCHS)] = 1
    seed: Seed = 0
    max_train_images: PosInt | None = None  # evenly spaced subset of the train split (quick runs); None: all
    max_eval_images: PosInt | None = None  # the same for the test (classification) / val (detection) split
    # what a 3-channel model sees: auto (grey images repeated when it was trained on grey ones: equal channel
    # statistics in its config.json), rgb (the images as they are), grey (always grey repeated)
    colour: Literal["auto", "rgb", "grey"] = "auto"
    # classification only
    img_size: Annotated[int, Field(gt=0, le=4096)] | None = None  # None: the model's own input size
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | None = None  # None: 0.1
    # detection only
    detector: Literal["faster_rcnn", "retinanet"] | None = None  # None: faster_rcnn
    canvas_size: Annotated[int, Field(ge=32, le=1024)] | None = None  # digits-coco canvases; None: 64
    min_size: Annotated[int, Field(gt=0, le=4096)] | None = None  # detector input short side; None: see docs
    max_size: Annotated[int, Field(gt=0, le=4096)] | None = None  # detector input long side cap
    fpn_channels: PosInt | None = None  # channels of every simple-feature-pyramid level; None: 64

    @model_validator(mode="after")
    def _fill_task_defaults(self) -> TransferTarget:
        defaults = dict(_TASK_DEFAULTS[self.task])
        if self.name == "digits-coco":
            defaults["canvas_size"] = 64
        for k, v in defaults.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, v)  # frozen model: filled once, at validation
        return self

    @property
    def task(self) -> str:
        return "detection" if self.name in DETECTION_TARGETS else "classification"


class TransferConfig(_Section):
    """`targets`: target name -> its settings, so each key shows in `dvc exp diff` and `dvc params
    diff` on its own. A list of targets each with a `name` (the earlier form) reads the same."""

    targets: dict[TargetName, TransferTarget] = {}

    @model_validator(mode="before")
    @classmethod
    def _keyed_by_name(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "targets" not in data:
            return data
        targets = data["targets"]
        if isinstance(targets, list):
            for i, t in enumerate(targets):
                if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                    raise ConfigError(f"transfer.targets.{i}: each listed target needs a name (or write "
                                      "transfer.targets as a mapping: name -> settings)")
            names = [t["name"] for t in targets]
            twice = next((n for n in names if names.count(n) > 1), None)
            if twice:
                raise ConfigError(f"transfer.targets: target '{twice}' is listed twice")
            targets = {t["name"]: t for t in targets}
        if isinstance(targets, dict):
            keyed = {}
            for name, t in targets.items():
                t = {} if t is None else t
                if isinstance(t, dict):
                    if t.get("name", name) != name:
                        raise ConfigError(f"transfer.targets.{name}.name: '{t['name']}' under key '{name}'; "
                                          "the key is the target's name")
                    t = {**t, "name": name}
                keyed[name] = t
            data = {**data, "targets": keyed}
        return data


class TrackingConfig(_Section):
    enabled: bool = True
    experiment: Annotated[str, Field(min_length=1)] = "vitnas"
    system_metrics: bool = True  # CPU/GPU/memory use of the training stages' runs (MLflow's system/...)


class Params(_Section):
    """The whole params.yaml: one section per stage plus tracking."""

    seed: Seed = 0
    tracking: TrackingConfig = TrackingConfig()
    data: DataConfig = DataConfig()
    space: SpaceConfig = SpaceConfig()
    supernet: SupernetConfig = SupernetConfig()
    proxy: ProxyConfig = ProxyConfig()
    search: SearchConfig = SearchConfig()
    slim: SlimConfig = SlimConfig()
    retrain: RetrainConfig = RetrainConfig()
    transfer: TransferConfig = TransferConfig()

    def search_space(self, *, num_classes: int | None = None, in_chans: int | None = None) -> SearchSpace:
        """The configured space, sized for the data (input size, channels, classes)."""
        return _space_from(self, num_classes=num_classes, in_chans=in_chans)

    def section_params(self, section: str) -> dict[str, Any]:
        """One section's values with dotted keys (what a stage logs to MLflow)."""
        return {k: v for k, v in self.flat().items() if k.startswith(f"{section}.")}

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, as MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else k, x)
            else:
                out[prefix] = v

        walk("", self.model_dump())
        return out


# ---- cross-field checks (after types and ranges) --------------------------------------------
def _space_from(p: Params, *, num_classes: int | None, in_chans: int | None) -> SearchSpace:
    s = p.space
    overrides = {k: getattr(s, k) for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "head_dim",
                                            "patch_size", "units", "local_units", "qkv_ratio", "kernel_size",
                                            "local_expansion", "glit_grid", "global_pool", "rel_pos",
                                            "rel_pos_clip", "norm_eps") if getattr(s, k) is not None}
    overrides["img_size"] = p.data.img_size
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if in_chans is not None:
        overrides["in_chans"] = in_chans
    try:
        if s.preset is None:
            required = ("embed_dim", "depth", "mlp_ratio") + (() if s.units else ("num_heads",))
            missing = [k for k in required if getattr(s, k) is None]
            if missing:
                raise ConfigError(f"space.{missing[0]}: required when space.preset is null")
            return SearchSpace(name="custom", **overrides)
        return SearchSpace.preset(s.preset, **overrides)
    except ArchError as e:
        msg = str(e)
        key = msg.split(":", 1)[0]
        if key == s.preset:
            raise ConfigError(f"space.preset: {msg}") from None
        if key == "img_size":
            raise ConfigError(f"data.img_size: {msg.split(':', 1)[1].strip()}") from None
        raise ConfigError(f"space.{msg}") from None


# (num_classes, in_chans) of the datasets whose shape is known before reading them; the space is
# checked at that shape (image folders: the preset's classes, 3 channels).
_DATA_SHAPES = {"digits": (10, 1), "mnist": (10, 1), "fashion-mnist": (10, 1), "kmnist": (10, 1),
                "cifar10": (10, 3), "cifar100": (100, 3)}


def _check(p: Params) -> None:
    d = p.data
    from vitnas.data.mnist import DEBIAN_ROOT, default_root

    if d.dataset != "digits" and not d.root and default_root(d.dataset) is None:
        raise ConfigError(f"data.root: required for dataset '{d.dataset}'"
                          + (f" (or apt-get install dataset-{d.dataset}, which installs it in {DEBIAN_ROOT[d.dataset]})"
                             if d.dataset in DEBIAN_ROOT else ""))
    if d.root is not None and d.root.startswith("s3://"):
        bucket = d.root[5:].split("/", 1)[0]
        if not bucket or any(c.isspace() for c in d.root):
            raise ConfigError(f"data.root: {d.root!r} is not an s3://bucket/prefix URI")
        if d.download:
            raise ConfigError("data.download: not with an s3:// data.root (the data is read from the bucket)")
    if d.dvc_rev is not None and d.dvc_repo is None:
        raise ConfigError("data.dvc_rev: only used with data.dvc_repo")
    if d.dvc_repo is not None:
        if d.dataset == "digits" or not d.root or d.root.startswith("s3://") or d.root.startswith("/") \
                or ".." in d.root.split("/"):
            raise ConfigError("data.root: with data.dvc_repo, the dataset's path inside that repository (relative, "
                              f"no '..'), got {d.root!r}")
        if d.download:
            raise ConfigError("data.download: not with data.dvc_repo (the data is read from the repository)")
    if d.shards is not None and d.shards != "out" and not (d.shards.startswith("s3://") and len(d.shards) > 5
                                                              and not any(c.isspace() for c in d.shards)):
        raise ConfigError(f"data.shards: expected null, 'out' or an s3://bucket/prefix URI, got {d.shards!r}")
    if d.store_size is not None and d.shards is None and not (d.dataset == "imagefolder" and (
            d.dvc_repo or (d.root and d.root.startswith("s3://")))):
        raise ConfigError("data.store_size: only used with data.shards (images are pre-resized into the shards)")
    if d.shuffle_buffer is not None and d.shards is None and not (d.dataset == "imagefolder" and (
            d.dvc_repo or (d.root and d.root.startswith("s3://")))):
        raise ConfigError("data.shuffle_buffer: streaming reads shards; set data.shards (out or an s3:// prefix)")
    if d.in_chans is not None and d.dataset != "imagefolder" and d.in_chans != _DATA_SHAPES[d.dataset][1]:
        raise ConfigError(f"data.in_chans: {d.dataset} has {_DATA_SHAPES[d.dataset][1]} channel(s), got {d.in_chans}")
    if d.in_chans not in (None, 1, 3):
        raise ConfigError(f"data.in_chans: image files are read as 1 (greyscale) or 3 (RGB) channels, got {d.in_chans}")
    chans = d.in_chans or _DATA_SHAPES.get(d.dataset, (None, 3))[1]
    for key in ("mean", "std"):
        v = getattr(d, key)
        if v is not None and len(v) != chans:
            raise ConfigError(f"data.{key}: {len(v)} values for {chans} channel(s)")
    if isinstance(d.val_fraction, float) and isinstance(d.test_fraction, float) \
            and d.val_fraction + d.test_fraction >= 1:
        raise ConfigError("data.test_fraction: data.val_fraction + data.test_fraction must be < 1")
    if d.augment.scale[0] > d.augment.scale[1]:
        raise ConfigError("data.augment.scale: lower bound must be <= upper bound")
    if d.augment.auto_augment is not None:
        _check_auto_augment(d.augment.auto_augment)
    classes, chans = _DATA_SHAPES.get(d.dataset, (None, d.in_chans or 3))
    space = p.search_space(num_classes=classes, in_chans=chans)  # preset names, choices, memory
    s = p.search
    fam = space.family
    if s.strategy == "hierarchical" and fam.refusal("hierarchical"):
        raise ConfigError(f"search.strategy: {fam.refusal('hierarchical')}; space '{space.name}' has "
                          f"{fam.title} blocks")
    if (s.strategy == "hierarchical") != p.supernet.hierarchical:
        raise ConfigError("supernet.hierarchical: " + (
            "must be true with search.strategy: hierarchical (the supernet stage then trains GLiT's level-1 space)"
            if p.supernet.hierarchical is False else "only used with search.strategy: hierarchical"))
    if fam.refusal("proxies") and s.fitness != "supernet":
        raise ConfigError(f"search.fitness: '{s.fitness}' uses zero-cost proxies: {fam.refusal('proxies')}; "
                          "use supernet")
    if fam.refusal("latency") and s.latency_max_ms is not None:
        raise ConfigError(f"search.latency_max_ms: {fam.refusal('latency')}")
    if p.supernet.layer_scale is not None and fam.refusal("layer_scale"):
        raise ConfigError(f"supernet.layer_scale: {fam.refusal('layer_scale')}")
    if p.supernet.layer_scale is not None and p.supernet.pretrained:
        raise ConfigError("supernet.layer_scale: timm ViT weights have no layer scales; start from them without "
                          "(null) or train from scratch (supernet.pretrained: null)")
    if fam.refusal("timm_weights") and p.supernet.pretrained:
        raise ConfigError(f"supernet.pretrained: cannot start from timm ViT weights: {fam.refusal('timm_weights')}")
    if s.level2_epochs is not None and s.strategy != "hierarchical":
        raise ConfigError("search.level2_epochs: only used with search.strategy: hierarchical")
    _check_greedy(s)
    for lo, hi in (("params_min", "params_max"), ("flops_min", "flops_max")):
        a, b = getattr(s, lo), getattr(s, hi)
        if a is not None and b is not None and b <= a:
            raise ConfigError(f"search.{hi}: must be > search.{lo}")
    if s.parents > s.population:
        raise ConfigError("search.parents: must be <= search.population")
    if s.mutations + s.crossovers == 0:
        raise ConfigError("search.mutations: search.mutations + search.crossovers must be > 0")
    sl = p.slim
    if sl.target_flops_ratio is not None and sl.target_params_ratio is not None:
        raise ConfigError("slim.target_params_ratio: set only one of slim.target_flops_ratio and "
                          "slim.target_params_ratio")
    if sl.method == "dynamicvit" and (sl.token_keep_ratio is None or sl.token_keep_ratio >= 1):
        raise ConfigError("slim.token_keep_ratio: slim.method dynamicvit keeps rho, rho^2, rho^3 of the patch "
                          f"tokens; set rho in (0, 1), e.g. 0.7 (got {sl.token_keep_ratio})")
    for t in p.transfer.targets.values():
        key = f"transfer.targets.{t.name}"
        if t.name in ("cifar10", "cifar100", "coco") and not t.root:
            raise ConfigError(f"{key}.root: required for target '{t.name}'")
        if t.name.startswith("digits-") and t.root:
            raise ConfigError(f"{key}.root: not used for '{t.name}' (the data stage writes it)")
        if t.name.startswith("digits-") and p.data.dataset == "imagefolder":
            raise ConfigError(f"{key}: '{t.name}' would fine-tune your image-folder model on the embedded digits; "
                              "set transfer.targets to your own targets (cifar10, cifar100, coco with a root) or {}")
        other = "detection" if t.task == "classification" else "classification"
        for k in _TASK_KEYS[other]:
            if getattr(t, k) is not None:
                raise ConfigError(f"{key}.{k}: not used by {t.task} target '{t.name}' (a {other} key)")
        if t.canvas_size is not None and t.name != "digits-coco":
            raise ConfigError(f"{key}.canvas_size: only for 'digits-coco' (the data stage's canvases)")
        if t.warmup_epochs >= t.epochs:
            raise ConfigError(f"{key}.warmup_epochs: must be < {key}.epochs")
        if t.min_lr > t.lr:
            raise ConfigError(f"{key}.min_lr: must be <= {key}.lr")
        if t.min_size is not None and t.max_size is not None and t.max_size < t.min_size:
            raise ConfigError(f"{key}.max_size: must be >= {key}.min_size")
    for name in ("supernet", "retrain"):
        r = getattr(p, name)
        if r.warmup_epochs >= r.epochs:
            raise ConfigError(f"{name}.warmup_epochs: must be < {name}.epochs")
        if r.min_lr > r.lr:
            raise ConfigError(f"{name}.min_lr: must be <= {name}.lr")
    if p.retrain.teacher is not None and not p.retrain.distill:
        raise ConfigError("retrain.teacher: only used with retrain.distill: true")
    _check_files(p)
    _check_search(p, space)
    _check_slim(p, space)


def _check_greedy(s: SearchConfig) -> None:
    """The greedy strategy's keys: a budget to slim to, a fitness it can use, no stray `greedy_score`."""
    if s.strategy != "greedy":
        if s.greedy_score is not None:
            raise ConfigError("search.greedy_score: only used with search.strategy: greedy")
        return
    if s.fitness == "hybrid":
        raise ConfigError("search.fitness: hybrid pre-filters evolution's proposals; greedy evaluates every "
                          "action of a step: use supernet or proxy")
    from vitnas.search.budgets import driving_cost

    driving_cost(s, s.greedy_score or "per_cost")


def _check_auto_augment(policy: str) -> None:
    """The policy string must be one timm understands (rand-..., augmix-..., or an AutoAugment name)."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hp = {"translate_const": 4, "img_mean": (128, 128, 128)}
    make = rand_augment_transform if policy.startswith("rand") else \
        augment_and_mix_transform if policy.startswith("augmix") else auto_augment_transform
    try:
        make(policy, hp)
    except Exception as e:  # timm raises AssertionError, KeyError or ValueError for a bad string
        raise ConfigError(f"data.augment.auto_augment: {policy!r} is not a timm augmentation policy "
                          f"({type(e).__name__}: {e}); e.g. rand-m9-mstd0.5-inc1, augmix-m5-w3, original") from None


def _check_files(p: Params) -> None:
    """Files params.yaml names must exist before any stage starts."""
    teacher = p.retrain.teacher
    if teacher is not None and not (Path(teacher) / "arch.json").is_file():
        raise ConfigError(f"retrain.teacher: {teacher} is not a model directory (no arch.json in it)")
    pre = p.supernet.pretrained
    if pre is not None:
        path = Path(pre)
        if not path.is_file():
            if path.exists() or "/" in pre or path.suffix in (".pth", ".pt", ".bin", ".safetensors", ".npz"):
                raise ConfigError(f"supernet.pretrained: {pre}: checkpoint file not found")
            import timm

            if not timm.is_model(pre):
                raise ConfigError(f"supernet.pretrained: {pre!r} is neither a checkpoint file nor a timm model name")
    s = p.search
    if s.latency_max_ms is not None and s.latency_table is None:
        raise ConfigError("search.latency_table: required when search.latency_max_ms is set")
    if s.latency_table is not None and s.latency_max_ms is None:
        raise ConfigError("search.latency_table: only used with search.latency_max_ms")
    if s.latency_table is not None and not Path(s.latency_table).is_file():
        raise ConfigError(f"search.latency_table: {s.latency_table}: not found (run `vitnas latency-table`)")


def _check_search(p: Params, space: SearchSpace) -> None:
    """Proxy names, sizes against the space, and reachable constraint windows."""
    from vitnas.search.constraints import Constraints
    from vitnas.search.fitness import check_proxy
    from vitnas.search.latency import LatencyTable

    s = p.search
    check_proxy(s.proxy, "search.proxy")
    check_proxy_names(list(p.proxy.proxies))
    searched = space.level1() if s.strategy == "hierarchical" else space
    size = searched.size()
    if p.proxy.num_candidates > size:
        raise ConfigError(f"proxy.num_candidates: {p.proxy.num_candidates:,} is more than the {size:,} archs of the "
                          f"space {space.name}")
    if s.population > size:
        raise ConfigError(f"search.population: {s.population:,} is more than the {size:,} archs of the space "
                          f"{space.name}")
    table = None
    if s.latency_max_ms is not None:
        try:
            table = LatencyTable.load(s.latency_table)
        except VitnasError as e:
            raise ConfigError(f"search.latency_table: {e}") from None
    try:
        Constraints.from_config(s, table).check_feasible(searched, seed=s.seed)
    except ConfigError:
        raise
    except VitnasError as e:  # a table that cannot price the space's blocks
        raise ConfigError(f"search.latency_table: {e}") from None


def check_proxy_names(names: list[str]) -> None:
    """`proxy.proxies`: registered names, each once."""
    from vitnas import proxies

    known = proxies.names()
    for n in names:
        if n not in known:
            raise ConfigError(f"proxy.proxies: unknown proxy '{n}'; known: {', '.join(known)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"proxy.proxies: '{dup[0]}' is listed twice")


def _check_slim(p: Params, space: SearchSpace) -> None:
    """`slim.round_to` must leave something to cut: at most the narrowest head dim and MLP width."""
    p.slim.check_fade()
    if space.family.refusal("slim"):  # refused where a model is slimmed
        return
    small = space.smallest()
    narrowest = min(min(d for d in small.head_dim if d), min(small.mlp_hidden))
    if p.slim.round_to > narrowest:
        raise ConfigError(f"slim.round_to: {p.slim.round_to:,} is wider than the narrowest head dim or MLP width "
                          f"of the space ({narrowest}), so slimming could never cut anything")


def _format(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith("function-") and x != "[key]")
    if e["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if e["type"] == "missing":
        return f"{loc}: required"
    if isinstance(e.get("ctx", {}).get("error"), ConfigError):  # a validator's own message names its key
        return str(e["ctx"]["error"])
    msg = e["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg[0].lower() + msg[1:]} (got {e.get('input')!r})"


def parse_params(raw: Any, source: str = "params", *, cross_checks: bool = True) -> Params:
    """Validate an already-loaded params mapping (e.g. a KFP pipeline parameter).

    `cross_checks=False` validates types and ranges only: for one stage's keys in a Kubeflow step,
    whose whole params were cross-checked by the pipeline's `init` step (the other sections here
    are defaults and need not fit the run's space)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        p = Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format(e)) from None
    if cross_checks:
        _check(p)
    return p


class _Loader(yaml.SafeLoader):
    """YAML as users mean it: `1e-3` is a float (YAML 1.1 reads it as a string), and a key written
    twice is an error rather than silently replacing the first (a whole section, say)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
                if first != line:
                    raise _DuplicateKey(f"'{key}' is written twice (lines {first} and {line}); the second would "
                                        "replace the first")
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(path: Path, what: str = "params file") -> Any:
    """Parse a YAML file with `_Loader`; every problem is a one-line `ConfigError` naming the file."""
    text = read_text(path, ConfigError, what)
    loader = _Loader(text)  # a SafeLoader: plain YAML types only, a python/* tag is an error
    try:
        return loader.get_single_data()
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    finally:
        loader.dispose()


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Params:
    """Read and validate params.yaml, with `key=value` overrides (`--set`, like `dvc exp run -S`)
    applied first; any problem raises `ConfigError` with one line."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: empty params file (copy the shipped params.yaml and edit it)")
    for item in overrides:
        raw = apply_override(raw, item)
    return parse_params(raw, str(path) + (" with --set " + " ".join(overrides) if overrides else ""))


def _numbers(value: Any) -> Any:
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < 2**63 else number  # 1e6: a count
    return value


def read_value(text: str, where: str) -> Any:
    """A value typed as text (`--set`, a text pipeline parameter): read as YAML (3, 1e-3, true, null,
    [1, 2]); empty is null."""
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{where}: cannot read {text!r} as a value") from None
    return _numbers(value)  # YAML 1.1 reads 1e-3 as text; people mean the number (in lists too)


def apply_override(raw: Any, item: str) -> dict[str, Any]:
    """`section.key=value` (the value read as YAML: 3, 1e-3, true, null, [1, 2]); a number in the path
    indexes a list. Unknown keys are left to validation to name."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set supernet.epochs=3")
    value = read_value(text, f"--set {key}")
    root = copy.deepcopy(raw) if isinstance(raw, dict) else {}
    node: Any = root
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} has {len(node)} entries; no entry {part}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is a value, not a section")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
    return root

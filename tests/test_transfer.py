"""Transfer: the readers on files in the real formats, COCOeval, the ViTDet detector, the stage."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitnas import Arch, build
from vitnas.config import parse_params
from vitnas.data import PreparedData
from vitnas.errors import ArtifactError, ConfigError
from vitnas.slim import save_model
from vitnas.stages import data as data_stage
from vitnas.stages import transfer as stage
from vitnas.stages._io import MARKER
from vitnas.transfer.classification import channel_stats, fine_tune, read_cifar
from vitnas.transfer.coco import CocoDetection, evaluate_coco, load_coco
from vitnas.transfer.detection import ViTDetBackbone, build_detector, pyramid_strides
from vitnas.transfer.targets import write_digits_cifar, write_digits_coco

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, head_dim=8, patch_size=4, img_size=16, in_chans=1,
            num_classes=10)
QUICK = {"epochs": 1, "warmup_epochs": 0, "batch_size": 32}


def tiny_vit(**over) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(Arch.create(**(TINY | over)))


@pytest.fixture(scope="module")
def transfer_data(tmp_path_factory) -> Path:
    """The data stage's output with both digits transfer targets."""
    out = tmp_path_factory.mktemp("tdata") / "data"
    data_stage.run(parse_params({"transfer": {"targets": [{"name": "digits-cifar"}, {"name": "digits-coco"}]}}),
                   out, track=False)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    arch = Arch.create(**TINY)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("retrain") / "retrain"
    save_model(build(arch), arch, d)
    return d


# ---- COCO: format, reader, COCOeval ---------------------------------------------------------------
def write_coco(root: Path, split: str = "val", *, categories=((3, "cat"), (7, "dog"), (11, "emu"))) -> Path:
    """A small instances file in the real format (non-contiguous category ids, a crowd region) + PNGs."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    boxes = {1: [(3, [4, 5, 20, 10]), (7, [30, 30, 25, 28])], 2: [(11, [10, 2, 12, 40])],
             3: [(7, [0, 0, 63, 47]), (3, [40, 8, 9, 9]), (11, [5, 40, 30, 6])]}
    for image_id, objs in boxes.items():
        name = f"img_{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / split / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        for cat, bbox in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox,
                         "area": bbox[2] * bbox[3], "iscrowd": 0, "segmentation": []})
    anns.append({"id": 99, "image_id": 2, "category_id": 3, "bbox": [40, 20, 10, 10], "area": 100, "iscrowd": 1,
                 "segmentation": {"counts": [0, 100], "size": [48, 64]}})
    doc = {"info": {}, "licenses": [], "images": images, "annotations": anns,
           "categories": [{"id": c, "name": n, "supercategory": "x"} for c, n in categories]}
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(doc))
    return path


def test_cocoeval_scores_ground_truth_as_predictions_1(tmp_path):
    ann = write_coco(tmp_path)
    coco = load_coco(ann)
    gt = [a for a in coco.dataset["annotations"] if not a["iscrowd"]]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in gt]
    m = evaluate_coco(coco, dets)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    assert m["AR100"] == pytest.approx(1.0)
    assert evaluate_coco(str(ann), dets)["AP"] == pytest.approx(1.0)  # from the json path too
    # a wrong class and a shifted box lose AP; no detections at all score 0
    bad = [dict(d) for d in dets]
    bad[0]["category_id"] = 11
    bad[1]["bbox"] = [b + 8 for b in bad[1]["bbox"][:2]] + bad[1]["bbox"][2:]
    assert evaluate_coco(coco, bad)["AP"] < 0.9
    assert all(v == 0 for v in evaluate_coco(coco, []).values())
    # restricted to some images, their ground truth only counts
    assert evaluate_coco(coco, [d for d in dets if d["image_id"] == 2], image_ids=[2])["AP"] == pytest.approx(1.0)


def test_coco_reader_on_real_format_files(tmp_path):
    ann = write_coco(tmp_path)
    ds = CocoDetection(ann, tmp_path / "val")
    assert len(ds) == 3 and ds.num_classes == 3 and ds.category_ids == [3, 7, 11]
    assert ds.category_names == ["cat", "dog", "emu"]
    x, t = ds[0]
    assert x.shape == (3, 48, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    ref = np.asarray(Image.open(tmp_path / "val" / "img_1.png"), dtype=np.float32) / 255
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1))
    assert t["boxes"].tolist() == [[4, 5, 24, 15], [30, 30, 55, 58]]  # xywh -> xyxy
    assert t["labels"].tolist() == [1, 2] and int(t["image_id"]) == 1  # ids 3, 7, 11 -> 1, 2, 3
    assert ds[1][1]["labels"].tolist() == [3]  # the crowd region is no training target
    gray = CocoDetection(ann, tmp_path / "val", in_chans=1)
    assert gray[0][0].shape == (1, 48, 64) and len(gray.channel_stats()[0]) == 1
    res = ds.to_coco_results(1, t["boxes"], torch.ones(2), t["labels"])
    assert [r["category_id"] for r in res] == [3, 7] and res[0]["bbox"] == [4, 5, 20, 10]


def test_coco_reader_errors_name_the_file(tmp_path):
    ann = write_coco(tmp_path)
    with pytest.raises(ArtifactError, match="instances_train.json: not found"):
        CocoDetection(tmp_path / "annotations" / "instances_train.json", tmp_path / "val")
    with pytest.raises(ArtifactError, match="image folder not found"):
        CocoDetection(ann, tmp_path / "nowhere")
    (tmp_path / "val" / "img_2.png").write_bytes(b"not a png")
    (tmp_path / "val" / "img_3.png").unlink()
    ds = CocoDetection(ann, tmp_path / "val")
    with pytest.raises(ArtifactError, match=r"img_2.png: corrupt image"):
        ds[1]
    with pytest.raises(ArtifactError, match=r"img_3.png: image not found \(listed in .*instances_val.json\)"):
        ds[2]
    doc = json.loads(ann.read_text())
    for broken, msg in ((lambda d: d.pop("annotations"), "no 'annotations' list"),
                        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\] needs a 'bbox'"),
                        (lambda d: d["annotations"][1].update(category_id=5), "unknown category_id 5"),
                        (lambda d: d["annotations"][1].update(image_id=42), "unknown image_id 42")):
        d = json.loads(json.dumps(doc))
        broken(d)
        ann.write_text(json.dumps(d))
        with pytest.raises(ArtifactError, match=msg):
            load_coco(ann)
    ann.write_text("{not json")
    with pytest.raises(ArtifactError, match="instances_val.json: corrupt"):
        load_coco(ann)


# ---- CIFAR format ---------------------------------------------------------------------------------
def test_digits_cifar_writer_makes_real_cifar_files(tmp_path):
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 255, (23, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(23) % 10
    counts = write_digits_cifar(tmp_path, (digits[:17], labels[:17]), (digits[17:], labels[17:]), seed=3)
    assert counts == {"train": 17, "test": 6}
    folder = tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    data = read_cifar(tmp_path)  # torchvision's parser (latin1 keys)
    assert data.classes == [str(i) for i in range(10)]
    assert data.train_images.shape == (17, 32, 32, 3) and data.train_labels.tolist() == labels[:17].tolist()
    assert data.test_labels.tolist() == labels[17:].tolist()
    # the classic reader of the CIFAR page (bytes keys) sees what the real files hold
    rows = []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape[1] == 3072
        rows.append(batch[b"data"])
    rows = np.concatenate(rows)
    # channel-major rows: 1024 red values, then green, then blue
    assert np.array_equal(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), data.train_images)
    with open(folder / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert meta[b"label_names"] == [str(i).encode() for i in range(10)] and meta[b"num_vis"] == 3072
    # deterministic given the seed
    write_digits_cifar(tmp_path / "again", (digits[:17], labels[:17]), (digits[17:], labels[17:]), seed=3)
    assert (folder / "test_batch").read_bytes() == (tmp_path / "again" / folder.name / "test_batch").read_bytes()


def test_cifar_reader_on_an_independent_minimal_writer(tmp_path):
    """Files written the plain way (python 3 pickle, str keys), as tools other than vitnas write them."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    img = np.zeros((2, 3072), np.uint8)
    img[0, :1024], img[0, 1024:2048], img[0, 2048:] = 10, 20, 30  # R, G, B planes
    img[1, 32 * 5 + 7] = 255  # red channel, row 5, column 7
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": img, "labels": [1, 2]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["a", "b", "c"]}, f)
    data = read_cifar(tmp_path)
    assert data.classes == ["a", "b", "c"] and data.train_images.shape == (10, 32, 32, 3)
    assert data.train_images[0, 0, 0].tolist() == [10, 20, 30]
    assert data.train_images[1, 5, 7].tolist() == [255, 0, 0] and data.train_images[1].sum() == 255
    assert data.test_labels.tolist() == [1, 2]
    # CIFAR-100's layout and keys
    folder100 = tmp_path / "cifar-100-python"
    folder100.mkdir()
    for name in ("train", "test"):
        with open(folder100 / name, "wb") as f:
            pickle.dump({"data": img, "fine_labels": [0, 1], "coarse_labels": [0, 0]}, f)
    with open(folder100 / "meta", "wb") as f:
        pickle.dump({"fine_label_names": ["x", "y"], "coarse_label_names": ["z"]}, f)
    d100 = read_cifar(tmp_path, "cifar100")
    assert d100.classes == ["x", "y"] and d100.train_images[0, 3, 3].tolist() == [10, 20, 30]
    # 1-channel models see the luma of it
    mean, _ = channel_stats(d100.train_images[:1], 1)
    assert mean[0] == pytest.approx((10 * 0.299 + 20 * 0.587 + 30 * 0.114) / 255, abs=1e-6)
    # broken copies are one-line errors naming the folder
    (folder / "data_batch_3").unlink()
    with pytest.raises(ArtifactError, match=r"cifar-10-batches-py: not a cifar10 copy .*missing data_batch_3"):
        read_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"cifar-10-batches-py/data_batch_3: not a CIFAR python batch"):
        read_cifar(tmp_path)


def test_fine_tune_learns_a_separable_cifar_task():
    """Two classes that differ by colour: a tiny 1-channel model at 8 px reaches high top-1."""
    from vitnas.transfer.classification import CifarData

    rng = np.random.default_rng(0)
    imgs = np.zeros((200, 32, 32, 3), np.uint8)
    labels = np.arange(200) % 2
    imgs[labels == 1] = 220
    imgs += rng.integers(0, 30, imgs.shape, dtype=np.uint8)
    data = CifarData(["dark", "light"], imgs[:160], labels[:160], imgs[160:], labels[160:])
    model = tiny_vit(img_size=16)
    r = fine_tune(model, data, epochs=3, batch_size=32, lr=3e-3, warmup_epochs=0, img_size=8, progress=False)
    assert r["top1"] >= 0.9 and model.patch_embed.img_size == (8, 8) and model.head.out_features == 2


# ---- the embedded targets from the data stage ----------------------------------------------------
def _image_set(images: np.ndarray) -> list[bytes]:
    return sorted(a.tobytes() for a in images)


def test_data_stage_writes_digits_targets_from_its_own_splits(transfer_data):
    from vitnas.data import load_source, split_indices
    from vitnas.stages.data import _digits_parts

    prep = PreparedData(transfer_data)
    m = json.loads((transfer_data / "metrics.json").read_text())
    n_train = prep.meta["splits"]["train"] + prep.meta["splits"]["val"]
    assert m["transfer_digits_cifar_train_images"] == n_train
    assert m["transfer_digits_cifar_test_images"] == prep.meta["splits"]["test"]
    assert m["transfer_digits_coco_val_boxes"] == prep.meta["splits"]["test"]  # every test digit once
    assert m["transfer_digits_coco_train_boxes"] == 2 * n_train
    # the digits the targets are made of: train+val only for training, test only for testing
    params = parse_params({"transfer": {"targets": [{"name": "digits-cifar"}]}})
    raw = load_source("digits")
    splits = split_indices(raw.train.labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    (tri, _), (tei, _) = _digits_parts(params, raw, splits)
    assert _image_set(tri) == _image_set(np.concatenate([prep.part("train").images, prep.part("val").images]))
    assert _image_set(tei) == _image_set(prep.part("test").images)
    cifar = read_cifar(transfer_data / "transfer" / "digits-cifar")
    assert len(cifar.train_labels) == n_train and cifar.num_classes == 10
    # digits-coco: canvases of the configured size, boxes inside and not overlapping
    root = transfer_data / "transfer" / "digits-coco"
    val = CocoDetection(root / "annotations" / "instances_val.json", root / "val")
    assert val.category_names == [str(i) for i in range(10)] and val.category_ids == list(range(1, 11))
    for i in range(len(val)):
        boxes = val.target(i)["boxes"]
        assert ((boxes >= 0) & (boxes <= 64)).all() and len(boxes) >= 1
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                (x0, y0, x1, y1), (u0, v0, u1, v1) = boxes[a].tolist(), boxes[b].tolist()
                assert x1 <= u0 or u1 <= x0 or y1 <= v0 or v1 <= y0
    assert Image.open(val.image_path(0)).size == (64, 64)


def test_digits_coco_writer_is_deterministic(tmp_path):
    rng = np.random.default_rng(1)
    digits = (rng.integers(0, 17, (30, 8, 8, 1)) * 15).astype(np.uint8)
    labels = np.arange(30) % 10
    c = write_digits_coco(tmp_path / "a", (digits[:20], labels[:20]), (digits[20:], labels[20:]), canvas_size=48,
                          seed=5)
    write_digits_coco(tmp_path / "b", (digits[:20], labels[:20]), (digits[20:], labels[20:]), canvas_size=48, seed=5)
    assert c["train_boxes"] == 40 and c["val_boxes"] == 10
    for rel in ("annotations/instances_train.json", "val/000001.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    doc = json.loads((tmp_path / "a" / "annotations" / "instances_val.json").read_text())
    assert sorted(a["category_id"] - 1 for a in doc["annotations"]) == sorted(labels[20:].tolist())


# ---- the detector ----------------------------------------------------------------------------------
@pytest.mark.parametrize("detector", ["faster_rcnn", "retinanet"])
def test_vitdet_detector_trains_and_predicts(detector):
    torch.manual_seed(0)
    model = build_detector(tiny_vit(), 10, detector=detector, min_size=64, image_mean=[0.5], image_std=[0.25],
                           fpn_channels=16)
    backbone = model.backbone
    assert isinstance(backbone, ViTDetBackbone) and backbone.strides == (4, 8, 16)
    assert backbone.vit.pos_embed.shape[1] == 1 + 16 * 16  # resampled to the 64 px grid
    feats = backbone(torch.zeros(2, 1, 64, 64))
    assert list(feats) == ["p2", "p3", "p4"] and [f.shape[-1] for f in feats.values()] == [16, 8, 4]
    images = [torch.rand(1, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 20.0, 30.0], [30.0, 30.0, 50.0, 58.0]]),
                "labels": torch.tensor([3, 7])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # an empty canvas
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert backbone.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # the ViT is fine-tuned too
    assert backbone.vit.pos_embed.grad is not None
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(1, 64, 64), torch.rand(1, 48, 80)])  # another shape: pos embed resampled
    assert len(out) == 2 and all(set(o) == {"boxes", "scores", "labels"} for o in out)
    assert all(((o["boxes"][:, 2] <= 80) & (o["boxes"][:, 3] <= 64)).all() for o in out)


def test_pyramid_levels_follow_the_patch_size():
    assert pyramid_strides(16, 512) == (4, 8, 16, 32)  # ViTDet: x4, x2, x1, /2 of the stride-16 map
    assert pyramid_strides(4, 64) == (4, 8, 16)
    with pytest.raises(ValueError):
        build_detector(tiny_vit(), 10, min_size=64, image_mean=[0.5], image_std=[0.25], detector="yolo")


# ---- the stage ---------------------------------------------------------------------------------------
def targets_params(*targets, track=False) -> dict:
    return {"tracking": {"enabled": track}, "transfer": {"targets": list(targets)}}


def test_stage_end_to_end_on_both_digits_targets(transfer_data, model_dir, tmp_path):
    out = tmp_path / "transfer"
    p = parse_params(targets_params(
        {"name": "digits-cifar", **QUICK, "lr": 2e-3, "max_train_images": 600},
        {"name": "digits-coco", **QUICK, "lr": 2e-3, "fpn_channels": 16, "max_train_images": 96,
         "max_eval_images": 24}, track=True))
    m = stage.run(p, transfer_data, model_dir, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "detections.png", "metrics.json"]
    assert json.loads((out / "metrics.json").read_text()) == m
    assert m["targets"] == 2
    n_test = PreparedData(transfer_data).meta["splits"]["test"]
    assert m["digits-cifar.train_images"] == 600 and m["digits-cifar.test_images"] == n_test
    correct = m["digits-cifar.top1"] * n_test  # a fraction of the whole test split (learning: see above)
    assert 0 <= m["digits-cifar.top1"] <= 1 and abs(correct - round(correct)) < 1e-6
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert 0 <= m[f"digits-coco.{k}"] <= 1
    assert m["digits-coco.train_images"] == 96 and m["digits-coco.val_images"] == 24
    assert m["digits-coco.input_size"] == 64 and m["digits-coco.seconds"] > 0
    assert (out / "detections.png").stat().st_size > 5000
    import mlflow

    runs = mlflow.search_runs(experiment_names=["vitnas"], filter_string="tags.`vitnas.stage` = 'transfer'",
                              output_format="list")
    assert runs and runs[0].data.metrics["transfer/digits-coco.AP50"] == pytest.approx(m["digits-coco.AP50"])


def test_stage_without_targets_writes_a_note(model_dir, tmp_path, capsys):
    m = stage.run(parse_params(targets_params()), tmp_path / "no-data", model_dir, tmp_path / "t", progress=False)
    assert m == {"targets": 0} and json.loads((tmp_path / "t" / "metrics.json").read_text()) == m
    assert "no targets" in capsys.readouterr().out


def test_stage_bad_inputs_are_one_line_errors_with_no_output(transfer_data, digits_dir, model_dir, tmp_path,
                                                           monkeypatch, cli):
    out = tmp_path / "out"
    p = parse_params(targets_params({"name": "digits-cifar", **QUICK}))
    with pytest.raises(ArtifactError, match="arch.json: not found"):
        stage.run(p, transfer_data, tmp_path / "no-model", out, progress=False)
    with pytest.raises(ArtifactError, match=r"transfer/digits-cifar: not found .*re-run `vitnas data`"):
        stage.run(p, digits_dir, model_dir, out, progress=False)  # a data dir made without the targets
    cifar = tmp_path / "cifar"
    (cifar / "cifar-10-batches-py").mkdir(parents=True)
    p10 = parse_params(targets_params({"name": "cifar10", "root": str(cifar), **QUICK}))
    with pytest.raises(ArtifactError, match="not a cifar10 copy"):
        stage.run(p10, transfer_data, model_dir, out, progress=False)
    coco = tmp_path / "coco"
    coco.mkdir()
    pc = parse_params(targets_params({"name": "coco", "root": str(coco), **QUICK}))
    with pytest.raises(ArtifactError, match="instances_train.json: not found"):
        stage.run(pc, transfer_data, model_dir, out, progress=False)
    write_coco(coco, "train")
    write_coco(coco, "val")
    (coco / "annotations" / "instances_val.json").write_text("[]")
    with pytest.raises(ArtifactError, match="instances_val.json: not a COCO instances file"):
        stage.run(pc, transfer_data, model_dir, out, progress=False)
    write_coco(coco, "val")
    (coco / "train" / "img_3.png").unlink()
    # a broken second target fails before the first one trains
    both = parse_params(targets_params({"name": "digits-cifar", **QUICK}, {"name": "coco", "root": str(coco)}))
    monkeypatch.setattr(stage, "fine_tune", lambda *a, **k: pytest.fail("trained before checking every target"))
    with pytest.raises(ArtifactError, match=r"train/img_3.png: image not found \(listed in .*instances_train.json"):
        stage.run(both, transfer_data, model_dir, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    # the CLI: one line on stderr, exit code 2
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(targets_params({"name": "digits-cifar"})))
    r = cli("transfer", "--params", str(params_file), "--data", str(digits_dir), "--model", str(model_dir),
            "--out", str(out))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "digits-cifar: not found" in r.stderr


@pytest.mark.parametrize("target, message", [
    ({"name": "digits-cifar", "detector": "retinanet"}, "digits-cifar.detector: not used by classification"),
    ({"name": "digits-coco", "img_size": 32}, "transfer.targets.digits-coco.img_size: not used by detection"),
    ({"name": "coco", "root": "/x", "canvas_size": 64}, "transfer.targets.coco.canvas_size: only for 'digits-coco'"),
    ({"name": "digits-coco", "root": "/x"}, "transfer.targets.digits-coco.root: not used for 'digits-coco'"),
    ({"name": "digits-coco", "epochs": 2, "warmup_epochs": 2}, "must be < transfer.targets.digits-coco.epochs"),
    ({"name": "digits-coco", "min_size": 64, "max_size": 32}, "transfer.targets.digits-coco.max_size: must be >="),
    ({"name": "digits-coco", "canvas_size": 16}, "transfer.targets.digits-coco.canvas_size"),
    ({"name": "digits-coco", "detector": "yolo"}, "transfer.targets.digits-coco.detector"),
])
def test_transfer_params_are_validated(target, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(targets_params(target))
    with pytest.raises(ConfigError, match="transfer.targets: target 'digits-cifar' is listed twice"):
        parse_params(targets_params({"name": "digits-cifar"}, {"name": "digits-cifar"}))


def test_transfer_params_fill_task_defaults_and_survive_a_round_trip():
    p = parse_params(targets_params({"name": "digits-cifar"}, {"name": "digits-coco"}, {"name": "coco", "root": "/c"}))
    cls, digits, coco = p.transfer.targets.values()
    assert (cls.label_smoothing, cls.detector, cls.canvas_size) == (0.1, None, None)
    assert (digits.detector, digits.canvas_size, digits.fpn_channels, digits.label_smoothing) == (
        "faster_rcnn", 64, 64, None)
    assert coco.canvas_size is None
    assert parse_params(p.model_dump(mode="json")) == p  # what the Kubeflow pipeline does with params


# ---- a 3-channel model trained on grey images -------------------------------------------------------------
def _grey_source(mean: list[float]) -> torch.nn.Module:
    """The demo-sized arch as a 3-channel model whose config says what data it was trained on."""
    from vitnas.models import hub

    arch = Arch.create(embed_dim=32, depth=2, num_heads=2, head_dim=16, mlp_ratio=2.0, patch_size=4, img_size=16,
                       in_chans=3, num_classes=10)
    torch.manual_seed(0)
    model = build(arch)
    hub.attach(model, hub.pretrained_cfg(arch, {"mean": mean, "std": [0.37] * 3}))
    return model


def test_a_3_channel_model_trained_on_grey_images_sees_the_target_grey(tmp_path):
    from vitnas.transfer.classification import source_is_grey, to_mode

    assert source_is_grey(_grey_source([0.3] * 3)) and not source_is_grey(_grey_source([0.485, 0.456, 0.406]))
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 40
    grey = np.asarray(to_mode(rgb, 3, grey=True))
    assert grey.shape == (4, 4, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert (np.asarray(to_mode(rgb, 3)) == rgb).all()  # a model trained on colour sees the colours
    mean, std = channel_stats(rgb[None], 3, grey=True)
    assert mean == [mean[0]] * 3 and std == [std[0]] * 3 and mean == channel_stats(rgb[None], 1)[0] * 3
    ann = write_coco(tmp_path)
    x = CocoDetection(ann, tmp_path / "val", grey=True)[0][0]
    assert x.shape == (3, 48, 64) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert not torch.equal(*CocoDetection(ann, tmp_path / "val")[0][0][:2])
    target = parse_params({"transfer": {"targets": [{"name": "digits-cifar"}]}}).transfer.targets["digits-cifar"]
    assert target.colour == "auto" and stage.grey_input(target, _grey_source([0.3] * 3))
    assert not stage.grey_input(target.model_copy(update={"colour": "rgb"}), _grey_source([0.3] * 3))


@pytest.mark.slow
def test_a_3_channel_model_trained_on_grey_images_learns_the_colour_target(transfer_data, one_thread):
    """The regression: such a model fine-tuned on the coloured digits-cifar stayed at chance with the
    colours passed through (0.114 here) and learns with them grey in its 3 channels (0.306)."""
    from sklearn.datasets import load_digits

    from vitnas.train import ClassifierTrainer, DistInfo

    d = load_digits()
    x = torch.nn.functional.interpolate(torch.tensor(d.images, dtype=torch.float32)[:, None] / 16, size=16,
                                        mode="bilinear").repeat(1, 3, 1, 1)
    x, y = (x - 0.3) / 0.37, torch.tensor(d.target)
    source = _grey_source([0.3] * 3)
    trainer = ClassifierTrainer(source, num_classes=10, dist=DistInfo(device=torch.device("cpu")), epochs=15,
                                steps_per_epoch=len(x) // 64, lr=3e-3, warmup_epochs=1)
    g = torch.Generator().manual_seed(0)
    for epoch in range(15):
        perm = torch.randperm(len(x), generator=g)
        trainer.train_epoch([(x[perm[i:i + 64]], y[perm[i:i + 64]]) for i in range(0, len(x) - 63, 64)], epoch,
                            False)
    cifar = read_cifar(transfer_data / "transfer" / "digits-cifar")
    top1 = {}
    for grey in (None, False):  # None: as the stage decides (auto), False: the colours as they are
        model = _grey_source([0.3] * 3)
        model.load_state_dict(source.state_dict())
        top1[grey] = fine_tune(model, cifar, epochs=8, batch_size=64, lr=2e-3, progress=False, grey=grey)["top1"]
    assert top1[None] > 0.2 and top1[None] > top1[False] + 0.1, top1

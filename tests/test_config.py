"""params.yaml validation: every bad input fails before work, naming its key."""

from __future__ import annotations

import pytest
import yaml

from vitnas.config import ConfigError, load_params, parse_params


def test_repo_params_yaml_is_valid(repo):
    p = load_params(repo / "params.yaml")
    assert p.data.dataset == "digits"
    assert p.search_space().name == "demo"


def test_params_yaml_documents_every_key(repo):
    """params.yaml spells out every setting, so a user sees all the knobs in one file."""
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            if isinstance(v, dict):
                out |= keys(v, f"{prefix}{k}.")
            else:
                out.add(prefix + k)
        return out

    text = (repo / "params.yaml").read_text()
    targets = "transfer.targets."  # a mapping of the targets a user runs (the demo's two), not a fixed set of keys
    written = {k for k in keys(yaml.safe_load(text)) if not k.startswith(targets)}
    expected = {k for k in parse_params({}).flat() if not k.startswith(targets)} | {"transfer.targets"}
    written |= {"transfer.targets"} if yaml.safe_load(text)["transfer"]["targets"] else set()
    # The space overrides are shown commented out (a preset is used as is by default).
    commented = {k for k in expected - written if k.startswith("space.") and f"# {k[6:]}:" in text}
    assert written | commented == expected


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"data": {"img_size": "big"}}, "data.img_size:"),
        ({"data": {"img_size": -16}}, "data.img_size:"),
        ({"data": {"imgsize": 16}}, "data.imgsize: unknown key"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"data": {"dataset": "emnist"}}, "data.dataset:"),
        ({"data": {"dataset": "cifar10"}}, "data.root: required"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction:"),
        ({"data": {"val_fraction": 0.5, "test_fraction": 0.5}}, "data.test_fraction:"),
        ({"data": {"augment": {"scale": [0.9, 0.5]}}}, "data.augment.scale:"),
        ({"data": {"augment": {"hflip": 2}}}, "data.augment.hflip:"),
        ({"data": {"img_size": 18}}, "data.img_size: 18 is not divisible"),
        ({"space": {"preset": "huge"}}, "space.preset:"),
        ({"space": {"embed_dim": [0, 32]}}, "space.embed_dim.0:"),
        ({"space": {"preset": None, "embed_dim": [32]}}, "space.depth: required"),
        ({"space": {"num_heads": [2, 2]}}, "space.num_heads: duplicate"),
        ({"search": {"params_min": "5M", "params_max": "4M"}}, "search.params_max: must be > search.params_min"),
        ({"search": {"flops_min": 2e9, "flops_max": 1e9}}, "search.flops_max: must be > search.flops_min"),
        ({"search": {"params_max": "lots"}}, "search.params_max:"),
        ({"search": {"parents": 60}}, "search.parents:"),
        ({"search": {"latency_max_ms": 0}}, "search.latency_max_ms:"),
        ({"search": {"fitness": "vibes"}}, "search.fitness:"),
        ({"supernet": {"epochs": 0}}, "supernet.epochs:"),
        ({"supernet": {"epochs": 2, "warmup_epochs": 2}}, "supernet.warmup_epochs:"),
        ({"supernet": {"sampling": "greedy"}}, "supernet.sampling:"),
        ({"supernet": {"lr": "fast"}}, "supernet.lr:"),
        ({"slim": {"target_flops_ratio": 0.5, "target_params_ratio": 0.5}}, "slim.target_params_ratio:"),
        ({"slim": {"target_flops_ratio": 1.5}}, "slim.target_flops_ratio:"),
        ({"transfer": {"targets": [{"name": "cifar100"}]}}, "transfer.targets.cifar100.root: required"),
        ({"tracking": {"enabled": "yes"}}, "tracking.enabled:"),
        ({"data": []}, "data:"),
    ],
)
def test_bad_value_names_its_key(raw, key):
    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    msg = str(e.value)
    assert msg.startswith(key), msg
    assert "\n" not in msg


def test_counts_accept_suffixes():
    p = parse_params({"space": {"preset": "autoformer-tiny"},
                      "search": {"params_min": "5M", "params_max": 6.5e6, "flops_max": "1.3G"}})
    assert (p.search.params_min, p.search.params_max, p.search.flops_max) == (5e6, 6.5e6, 1.3e9)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  img_size: [16\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d"):
        load_params(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_custom_space_and_data_sizing(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({
        "data": {"img_size": 32},
        "space": {"preset": None, "embed_dim": [24, 48], "depth": [1, 2], "num_heads": [1, 2],
                  "mlp_ratio": [2.0], "head_dim": 8, "patch_size": 8},
        "proxy": {"num_candidates": 10}, "search": {"population": 10, "parents": 5},  # a 12-arch space
    }))
    space = load_params(f).search_space(num_classes=7, in_chans=3)
    assert space.embed_dim == (24, 48) and space.patch_size == 8 and space.img_size == 32
    assert space.num_classes == 7 and space.in_chans == 3
    assert space.size() == 2 * (2 + 2**2)


def test_slim_target_default_and_override():
    assert parse_params({}).slim.target == ("flops", 0.6)
    assert parse_params({"slim": {"target_params_ratio": 0.5}}).slim.target == ("params", 0.5)


def test_yaml_reads_exponents_as_numbers_and_refuses_repeated_keys(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("supernet:\n  lr: 1e-3\n  min_lr: 1E-6\nsearch:\n  params_max: 6e6\n")
    p = load_params(f)
    assert (p.supernet.lr, p.supernet.min_lr, p.search.params_max) == (1e-3, 1e-6, 6e6)
    f.write_text("search:\n  seed: 1\nsupernet:\n  lr: 1e-3\nsearch:\n  population: 5\n")
    with pytest.raises(ConfigError, match=r"p.yaml: 'search' is written twice \(lines 1 and 5\)"):
        load_params(f)

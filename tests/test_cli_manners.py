"""CLI manners users rely on: `--set KEY=VALUE` overrides validated like the file, `--version`,
counts printed as counts."""

from __future__ import annotations

import pytest

from vitnas.cli import _value
from vitnas.config import apply_override, load_params
from vitnas.errors import ConfigError


def test_set_overrides_values_sections_and_list_entries(repo):
    p = load_params(repo / "params.yaml", ["supernet.epochs=12", "space.embed_dim=[32, 48]",
                                           "transfer.targets.digits-cifar.epochs=2", "retrain.teacher=null",
                                           "proxy.proxies.1=synflow"])
    assert p.supernet.epochs == 12 and p.transfer.targets["digits-cifar"].epochs == 2 and p.retrain.teacher is None
    assert p.proxy.proxies[1] == "synflow"  # a number in the key indexes a list
    assert p.search_space(num_classes=10, in_chans=1).embed_dim == (32, 48)
    raw = {"supernet": {"epochs": 1}}
    assert apply_override(raw, "supernet.lr=1e-3") == {"supernet": {"epochs": 1, "lr": 1e-3}}
    assert raw == {"supernet": {"epochs": 1}}  # the file's values are not changed in place


@pytest.mark.parametrize("item, message", [
    ("supernet.epochs", "expected KEY=VALUE"),
    ("supernet.epochs=abc", "supernet.epochs"),
    ("supernet.epochz=3", "supernet.epochz: unknown key"),
    ("proxy.proxies.9=dss", "no entry 9"),
    ("transfer.targets.imagenet.epochs=1", "transfer.targets.imagenet: input should be .cifar10."),
    ("supernet.epochs.x=1", "supernet.epochs is a value"),
])
def test_a_bad_override_is_one_error_naming_the_key(repo, item, message):
    with pytest.raises(ConfigError, match=message):
        load_params(repo / "params.yaml", [item])


def test_version_and_counts(monkeypatch, capsys):
    import sys

    from vitnas.cli import main

    monkeypatch.setattr(sys, "argv", ["vitnas", "--version"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None) and capsys.readouterr().out.startswith("vitnas ")
    assert [_value(v) for v in (40200, 40200.0, 0.97222, 1404768, True, float("nan"))] == \
        ["40200", "40200", "0.9722", "1404768", "True", "nan"]

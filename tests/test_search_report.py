"""The search's figures and report mark the arch the search selected (ties broken its way), and the
candidate table keeps one type per column so the MLflow UI can sort it."""

from __future__ import annotations

import html

import pytest

from vitnas.numbers import human
from vitnas.search.report import best_index, candidate_rows, columns, html_report, plot_pareto

ARCH = {"embed_dim": 32, "depth": 2, "num_heads": [2, 2], "mlp_ratio": [2.0, 2.0], "img_size": 16}


def _rec(g, fit, params, heads=(2, 2)):
    return {"arch": ARCH | {"num_heads": list(heads)}, "generation": g, "origin": "random" if g == 0 else "mutation",
            "params": params, "flops": params * 20, "fitness": fit}


def test_the_selected_candidate_is_the_searchs_choice_not_the_first_maximum(tmp_path):
    history = [_rec(0, 0.9, 145_000), _rec(0, 0.5, 20_000), _rec(1, 0.9, 60_700, (2, 1))]
    selected = history[2]  # a tie on fitness: the search took the cheaper one
    assert best_index(history, selected) == 2
    assert best_index([dict(r) for r in history], selected) == 2  # equal records (a reloaded history)
    page = html_report(history, [{"generation": 0, "best_fitness": 0.9, "population_mean_fitness": 0.7},
                                 {"generation": 1, "best_fitness": 0.9, "population_mean_fitness": 0.8}],
                       selected, "val top-1")
    assert "<tr id='c2' class=sel>" in page and page.count("class=sel") == 1
    assert html.escape("selected: #2 generation 1 (mutation): fitness 0.9, 60.7k params") in page
    plot_pareto(history, tmp_path / "p.png", "val top-1", selected)
    assert (tmp_path / "p.png").stat().st_size > 5000


def test_candidate_table_has_one_type_per_column():
    rows = candidate_rows([_rec(0, 0.9, 1000), _rec(1, 0.8, 2000, (2, 1))])
    assert rows[0]["num_heads"] == 2 and rows[1]["num_heads"] == "[2, 1]"  # uniform genes read as one number
    cols = columns(rows)
    assert cols["num_heads"] == ["2", "[2, 1]"] and cols["mlp_ratio"] == [2.0, 2.0]
    assert cols["candidate"] == [0, 1] and cols["params"] == [1000, 2000]


def test_counts_read_like_counts():
    assert [human(v) for v in (40_200, 60_700, 1_404_768, 12, 0.8125, 2.5e9)] == \
        ["40.2k", "60.7k", "1.4M", "12", "0.8125", "2.5G"]


def test_a_candidate_without_a_finite_fitness_is_a_failed_trial(tmp_path):
    import optuna

    from vitnas.search.trials import write_study

    arch = {"embed_dim": 32, "depth": 2, "num_heads": [1, 2], "patch_size": 4}
    hist = [{"arch": arch, "generation": 0, "origin": "random", "fitness": 0.5, "params": 10, "flops": 20,
             "latency_ms": 1.5},
            {"arch": arch | {"embed_dim": 48, "depth": 1, "num_heads": [2]}, "generation": 1, "origin": "mutation",
             "fitness": float("-inf"), "params": 12, "flops": 30, "latency_ms": 2.0, "level": 2}]
    assert write_study(hist, tmp_path / "s.db") == 2
    study = optuna.load_study(study_name="vitnas-search", storage=f"sqlite:///{tmp_path / 's.db'}")
    ok, failed = study.get_trials()
    assert study.metric_names == ["fitness", "params", "flops", "latency_ms"]
    assert ok.values == [0.5, 10, 20, 1.5] and failed.state.name == "FAIL" and failed.values is None
    assert failed.params == {"embed_dim": 48, "depth": 1, "num_heads.0": 2} and failed.user_attrs["level"] == 2
    with pytest.raises(FileExistsError):  # never over a file
        write_study(hist, tmp_path / "s.db")

"""Every evaluated candidate of a search as a trial of an Optuna study, so `optuna-dashboard` shows
the Pareto front, the history, parallel coordinates and parameter importance with no code of ours.

One trial per history record, in evaluation order: params are the genes that vary (scalars as they
are, per-layer genes one param per layer, `num_heads.0`, ...; a layer an arch does not have is
absent), each a categorical distribution over the values the search evaluated; values are fitness
(maximised) and the costs (minimised); user attributes are the generation, origin and candidate
number. A candidate whose fitness is not finite (refused, diverged) is a FAIL trial.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STUDY = "vitnas-search"
COSTS = ("params", "flops", "latency_ms")  # minimised, those every candidate has
ATTRS = ("generation", "origin", "level", "proxy", "score", "chosen")


def gene_params(arch: Mapping[str, Any]) -> dict[str, Any]:
    """An arch's genes as flat Optuna params (lists one param per layer)."""
    out: dict[str, Any] = {}
    for k, v in arch.items():
        if isinstance(v, list):
            out |= {f"{k}.{i}": x for i, x in enumerate(v) if isinstance(x, (int, float, str, bool))}
        elif isinstance(v, (int, float, str, bool)):
            out[k] = v
    return out


def study_rows(history: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]], dict[str, list]]:
    """(objective names, per-candidate params, choices per varying param) of a search history."""
    objectives = ["fitness", *(c for c in COSTS if history and all(c in r for r in history))]
    params = [gene_params(r["arch"]) for r in history]
    seen: dict[str, set] = {}
    for p in params:
        for k, v in p.items():
            seen.setdefault(k, set()).add(v)
    choices = {k: sorted(v, key=lambda x: (str(type(x)), x)) for k, v in seen.items() if len(v) > 1}
    return objectives, [{k: v for k, v in p.items() if k in choices} for p in params], choices


def write_study(history: Sequence[Mapping[str, Any]], path: str | Path, *, name: str = STUDY) -> int:
    """Write `history` as study `name` into a new SQLite file `path` (it must not exist); returns
    the number of trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    from vitnas.search.evolution import _num

    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    objectives, params, choices = study_rows(history)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    try:
        study = optuna.create_study(study_name=name, storage=storage,
                                    directions=["maximize"] + ["minimize"] * (len(objectives) - 1))
        with warnings.catch_warnings():  # metric names are "experimental" in Optuna, and what the dashboard shows
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objectives)
        study.set_user_attr("objectives", objectives)
        trials = []
        for i, (rec, p) in enumerate(zip(history, params, strict=True)):
            values = [_num(rec[k]) for k in objectives]
            ok = -math.inf not in values  # evolution's rule: what is not a finite number ranks last
            attrs = {"candidate": i} | {k: rec[k] for k in ATTRS if k in rec}
            trials.append(create_trial(
                state=TrialState.COMPLETE if ok else TrialState.FAIL, values=values if ok else None,
                params=p, distributions={k: CategoricalDistribution(choices[k]) for k in p},
                user_attrs=attrs))
        study.add_trials(trials)
    finally:
        storage.engine.dispose()
    return len(history)

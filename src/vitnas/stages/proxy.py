"""Proxy stage: sample legal candidates of the space and score them with training-free proxies.

Candidates: `proxy.num_candidates` distinct archs sampled uniformly (seed `proxy.seed`), keeping
only those inside the `search.params_min/max` and `search.flops_min/max` windows (the search
stage's constraints), so the scores rank exactly the candidates a search may pick.

Weights: as TF-TAS, candidates are scored randomly initialised. One `Supernet(space)` is built,
seeded by `proxy.seed`, once; each candidate is scored through it (its weights are the used
slices of the shared ones; `vitnas.proxies` gives the same values as on the extracted subnet),
so a candidate's score depends only on the seed and the arch, never on the order or on what was
scored before, and no model is built or copied per candidate. With `supernet_path` (opt-in; the
pipeline does not pass it) the candidates are scored through the *trained* supernet instead.

Outputs in `out/`:
- `scores.jsonl`: one candidate a line, {"arch", "params", "flops", "scores": {name: value}} plus
  "terms": {"msa", "mlp"} (DSS term totals) when dss or dss_rank is scored. It is the stage's
  checkpoint: each line is appended and flushed as soon as its candidate is scored, so an
  interruption loses at most the candidate being scored; a re-run with the same params and
  inputs (fingerprint in `out/.scores.fingerprint`) skips the candidates already in it, a re-run
  with other params starts it over. It therefore lives in `out` directly rather than appearing
  atomically. Set-level proxies (dss_rank) are computed over the whole set at the end, and the
  file is then rewritten once, atomically, with their values in every line.
- `top_k.json`: the best `proxy.top_k` candidates by the first configured proxy;
- `metrics.json`: flat numbers (counts, timing, best score per proxy, Kendall tau of the first
  proxy against each other one). Both written atomically at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from vitnas import proxies
from vitnas.config import ConfigError, Params, check_proxy_names
from vitnas.data import PreparedData
from vitnas.digests import file_sha256
from vitnas.errors import ArtifactError
from vitnas.progress import progress as progress_bar
from vitnas.proxies.scorer import Scorer, fixed_batch, seeded_supernet
from vitnas.space import Arch, ArchError, SearchSpace, count_flops, count_params
from vitnas.stages._checkpoint import fingerprint as make_fingerprint
from vitnas.stages._io import claim_output, flat_metrics, mark, write_json
from vitnas.stages._tracked import open_run
from vitnas.supernet import Supernet, SupernetFileError
from vitnas.train.distributed import DistInfo, broadcast, gather_map, init_distributed

log = logging.getLogger("vitnas.proxy")

SCORES = "scores.jsonl"
FINGERPRINT = ".scores.fingerprint"
_MAX_TRIES_PER_CANDIDATE = 200
_MIN_TRIES = 2000


# ---- candidates -------------------------------------------------------------------------------
def _windows(params: Params) -> dict[str, float | None]:
    s = params.search
    return {"params_min": s.params_min, "params_max": s.params_max, "flops_min": s.flops_min,
            "flops_max": s.flops_max}


def _check_feasible(space: SearchSpace, windows: dict[str, float | None]) -> None:
    """Fail at once when a window excludes the whole space (costs are monotone in every choice)."""
    lo_arch, hi_arch = space.smallest(), space.largest()
    for kind, count in (("params", count_params), ("flops", count_flops)):
        lo, hi = count(lo_arch), count(hi_arch)
        feasible = f"the space {space.name} spans {kind} {lo:,}-{hi:,}"
        vmin, vmax = windows[f"{kind}_min"], windows[f"{kind}_max"]
        if vmax is not None and vmax < lo:
            raise ConfigError(f"search.{kind}_max: {vmax:,.0f} is below the smallest arch ({feasible})")
        if vmin is not None and vmin > hi:
            raise ConfigError(f"search.{kind}_min: {vmin:,.0f} is above the largest arch ({feasible})")


def _violation(arch: Arch, windows: dict[str, float | None]) -> str | None:
    """The first window key `arch` falls outside of, or None."""
    costs = {"params": count_params(arch), "flops": count_flops(arch)}
    for kind, value in costs.items():
        vmin, vmax = windows[f"{kind}_min"], windows[f"{kind}_max"]
        if vmin is not None and value < vmin:
            return f"{kind}_min"
        if vmax is not None and value > vmax:
            return f"{kind}_max"
    return None


def sample_candidates(space: SearchSpace, num: int, seed: int,
                      windows: dict[str, float | None]) -> list[Arch]:
    """`num` distinct archs, uniformly sampled (seeded), inside the params/FLOPs windows.

    Raises `ConfigError` naming the key when the windows exclude the space or leave too few
    archs to find `num` distinct ones.
    """
    _check_feasible(space, windows)
    size = space.size()
    if num > size:
        raise ConfigError(f"proxy.num_candidates: {num} is more than the {size} archs of the space {space.name}")
    rng = random.Random(repr(("proxy-candidates", seed)))
    found: dict[Arch, None] = {}
    rejected: dict[str, int] = {}
    tries = 0
    max_tries = max(_MIN_TRIES, _MAX_TRIES_PER_CANDIDATE * num)
    while len(found) < num and tries < max_tries:
        tries += 1
        arch = space.sample(rng)
        if arch in found:
            rejected["duplicate"] = rejected.get("duplicate", 0) + 1
            continue
        why = _violation(arch, windows)
        if why is not None:
            rejected[why] = rejected.get(why, 0) + 1
            continue
        found[arch] = None
    if len(found) < num:
        window_rejects = {k: v for k, v in rejected.items() if k != "duplicate"}
        lo, hi = space.smallest(), space.largest()
        ranges = (f"space {space.name}: params {count_params(lo):,}-{count_params(hi):,}, "
                  f"flops {count_flops(lo):,}-{count_flops(hi):,}")
        if window_rejects and (not found or max(window_rejects.values()) >= rejected.get("duplicate", 0)):
            key = max(window_rejects, key=window_rejects.get)
            raise ConfigError(
                f"search.{key}: only {len(found)} of {tries} sampled archs fall inside the params/flops windows "
                f"({window_rejects[key]} rejected by {key}); proxy.num_candidates={num} needs a wider window "
                f"({ranges})")
        raise ConfigError(f"proxy.num_candidates: only {len(found)} distinct legal archs found in {tries} samples; "
                          f"lower proxy.num_candidates or widen the search windows ({ranges})")
    return list(found)


# ---- the resumable score log ----------------------------------------------------------------
class _BadRecord(ValueError):
    """A score record with a field a later step cannot use."""


def _number(v: Any, *, none_ok: bool) -> bool:
    """A finite JSON number (NaN and infinities are written as null by vitnas, never as numbers)."""
    if v is None:
        return none_ok
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_record(rec: Any, names: list[str]) -> str:
    """The record's arch key, after checking every field a later step reads (`_BadRecord` says
    which field is wrong)."""
    if not isinstance(rec, dict):
        raise _BadRecord("not a JSON object")
    key = Arch.from_dict(rec["arch"]).key()
    for field in ("params", "flops"):
        v = rec.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _BadRecord(f"'{field}' is not a count")
    scores = rec.get("scores")
    if not isinstance(scores, dict):
        raise _BadRecord("'scores' is not an object")
    for n in names:
        if proxies.is_set_level(n):
            terms = rec.get("terms")
            if not isinstance(terms, dict) or not terms or not all(_number(t, none_ok=False)
                                                                    for t in terms.values()):
                raise _BadRecord(f"'terms' (for {n}) are missing or not finite numbers")
        elif n not in scores:
            raise _BadRecord(f"no score for {n!r}")
        elif not _number(scores[n], none_ok=True):
            raise _BadRecord(f"score {n!r} is {scores[n]!r}, not a finite number or null")
    return key


def _read_log(path: Path, wanted: set[str], names: list[str], repair: bool = True) -> dict[str, dict]:
    """Records of scores.jsonl by arch key, each checked (`_check_record`). A torn last line (an
    interrupted write: no newline) is cut off (`repair=False`: only skipped, the file is left as it
    is); any other unreadable line is an `ArtifactError` naming its line number."""
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    good = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw)
                key = _check_record(rec, names)
            except (ValueError, KeyError, TypeError) as e:  # ArchError and JSON errors are ValueErrors
                why = f" ({e})" if isinstance(e, _BadRecord) else ""
                raise ArtifactError(f"{path}:{lineno}: not a score record{why} (the file was changed by hand?); "
                                    "delete it to score again") from None
            if key in wanted:
                records[key] = rec
            good += len(raw)
    if repair and good != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


def _rewrite(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- inputs ------------------------------------------------------------------------------------
def _data_batch(data: PreparedData, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded batch of train images (eval transform) for the data-dependent proxies."""
    ds = data.dataset("train", sparse=True)
    if batch_size > len(ds):
        raise ConfigError(f"proxy.batch_size: {batch_size} is larger than the train split ({len(ds)} images)")
    return fixed_batch(ds, batch_size, seed)


def _scoring_model(space: SearchSpace, seed: int, supernet_path: str | Path | None,
                   device: torch.device) -> Supernet:
    if supernet_path is None:
        return seeded_supernet(space, seed).to(device)
    try:
        net = Supernet.load(supernet_path, map_location=device)
    except SupernetFileError as e:
        raise ArtifactError(str(e)) from None
    mine, theirs = space.to_dict(), net.space.to_dict()
    mine.pop("name"), theirs.pop("name")
    if mine != theirs:
        raise ArtifactError(f"{supernet_path}: the supernet was built for another search space ({net.space}); "
                            f"params.yaml and the data give {space}")
    return net.eval()


# ---- the stage ---------------------------------------------------------------------------------
SHARD = "shard.json"  # in a shard's output: which candidates it scored


def run(params: Params, data_dir: str | Path, out: str | Path, *, supernet_path: str | Path | None = None,
        device: str = "auto", track: bool | None = None, progress: bool = True, force: bool = False,
        shard: tuple[int, int] | None = None, merge: list[str | Path] | None = None) -> dict[str, float]:
    """Score `proxy.num_candidates` legal candidates; writes `out/scores.jsonl`, `top_k.json`, `metrics.json`.
    `force`: write into `out` even when vitnas did not write it (a directory only).

    Scaling out: under torchrun every rank scores its share of the candidates and rank 0 writes the
    one log. `shard=(k, K)` scores only candidates k, k + K, ... into `out` (scores.jsonl and
    shard.json, for a separate pod each); `merge=[shard outputs]` then checks that the shards were
    made with these params and inputs and together hold every candidate, and writes the stage's
    outputs from them, equal to one run's (nothing is scored again)."""
    shard = (int(shard[0]), int(shard[1])) if shard is not None else None  # a JSON list from a pipeline step
    if shard is not None and merge is not None:
        raise ConfigError("--shard and --merge: give one of them")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ConfigError(f"--shard {shard[0]}/{shard[1]}: expected K/N with 0 <= K < N")
    with claim_output(out, "proxy", force=force, inputs=[data_dir, supernet_path, *(merge or [])]):
        return _run(params, data_dir, Path(out), supernet_path=supernet_path, device=device, track=track,
                    progress=progress, shard=shard, merge=[Path(m) for m in merge] if merge is not None else None)


def _merged(shards: list[Path], fp: str, keys: list[str], names: list[str]) -> dict[str, dict]:
    """The records of the shard outputs, checked: same fingerprint, every candidate present."""
    if not shards:
        raise ConfigError("--merge: no shard outputs given")
    done: dict[str, dict] = {}
    wanted = set(keys)
    for d in shards:
        fp_file, spec_file = d / FINGERPRINT, d / SHARD
        if not fp_file.is_file() or not spec_file.is_file():
            raise ArtifactError(f"{d}: not a proxy shard output (no {FINGERPRINT} or {SHARD})")
        if fp_file.read_text().strip() != fp:
            raise ArtifactError(f"{fp_file}: the shard was scored with other params, inputs or space")
        done |= _read_log(d / SCORES, wanted, names, repair=False)
    missing = [k for k in keys if k not in done]
    if missing:
        raise ArtifactError(f"{shards[0].parent}: the shards hold {len(done)} of {len(keys)} candidates "
                            f"(first missing: {missing[0]}); rerun the unfinished shard")
    return done


def _run(params: Params, data_dir: str | Path, out: Path, *, supernet_path: str | Path | None, device: str,
         track: bool | None, progress: bool, shard: tuple[int, int] | None = None,
         merge: list[Path] | None = None) -> dict[str, float]:
    cfg = params.proxy
    names = list(cfg.proxies)
    info = init_distributed(device)  # under torchrun: every rank scores its share
    main = info.is_main
    space, candidates, fp, inputs, targets = _prepare(params, data_dir, supernet_path, info.device)
    keys = [a.key() for a in candidates]
    if merge is not None:
        merged = _merged(merge, fp, keys, names)  # every record checked before anything is written
        model = None
    else:
        model = _scoring_model(space, cfg.seed, supernet_path, info.device)  # a bad supernet fails before writing
    mine = range(len(keys)) if shard is None else range(shard[0], len(keys), shard[1])
    log_path = out / SCORES
    done: dict[str, dict] = {}
    if main:
        done = _open_log(out, fp, {keys[i] for i in mine}, names)
        if merge is not None:
            done = merged
    todo = broadcast([i for i in mine if keys[i] not in done], info)  # the same work list on every rank
    if main and shard is not None:
        write_json(out / SHARD, {"shard": shard[0], "num_shards": shard[1], "candidates": len(mine)})
    if done and main and merge is None:
        print(f"resuming: {len(done)} of {len(mine)} candidates already scored in {log_path}", flush=True)

    t0 = time.time()
    with open_run("proxy", params, track, main=main and shard is None, inputs={"data": data_dir,
                  "supernet": supernet_path}, extra_params={"proxy.weights": "random" if supernet_path is None
                                                            else "trained"}) as run_:
        t_score = time.perf_counter()
        if todo:
            _score(Scorer(names, model, seed=cfg.seed, inputs=inputs, targets=targets, device=info.device),
                   [(keys[i], candidates[i]) for i in todo], done, log_path if main else None, info,
                   bar=dict(total=len(mine), initial=len(mine) - len(todo), enabled=progress and main))
        scored_seconds = time.perf_counter() - t_score
        metrics: dict[str, float] = {}
        if main and shard is not None:  # a shard's log is complete and in order; the merge step finishes the stage
            metrics = flat_metrics({"num_candidates": len(mine), "candidates_scored": len(todo),
                                    "seconds": round(time.time() - t0, 3), "shard": shard[0],
                                    "num_shards": shard[1], "world_size": info.world_size})
            write_json(out / "metrics.json", metrics)
        elif main:
            records = _finish_log(log_path, [done[k] for k in keys], keys, names)
            metrics = _metrics(records, names, len(todo), time.time() - t0, scored_seconds)
            metrics |= {"world_size": info.world_size} | ({"num_shards": len(merge)} if merge is not None else {})
            write_json(out / "top_k.json", _top_k(records, names[0], cfg.top_k))
            write_json(out / "metrics.json", metrics)
            run_.log_metrics(metrics)
            run_.log_artifact(log_path)
            run_.log_artifact(out / "top_k.json")
    info.barrier()
    return metrics


def _prepare(params: Params, data_dir: str | Path, supernet_path: str | Path | None, dev: torch.device):
    """(space, candidates, the run's fingerprint, the data batch or None, its labels or None), every
    input checked before any scoring."""
    cfg = params.proxy
    names = list(cfg.proxies)
    check_proxy_names(names)  # also here: a Kubeflow step's params skip the cross-checks
    data = PreparedData(data_dir)
    if data.img_size != params.data.img_size:
        raise ArtifactError(f"{data.path / 'dataset.json'}: img_size {data.img_size} != data.img_size "
                            f"{params.data.img_size} in params; re-run `vitnas data`")
    space = params.search_space(num_classes=data.num_classes, in_chans=data.in_chans)
    windows = _windows(params)
    candidates = sample_candidates(space, cfg.num_candidates, cfg.seed, windows)
    use_data = any(proxies.needs_data(n) for n in names)
    inputs = targets = None
    if use_data:
        inputs, targets = _data_batch(data, cfg.batch_size, cfg.seed)
        inputs, targets = inputs.to(dev), targets.to(dev)
    weights = "random" if supernet_path is None else file_sha256(supernet_path)[:16]
    # num_candidates is left out: sampling is sequential, so a larger set extends a smaller one.
    data_id = {k: data.meta.get(k) for k in ("name", "splits", "seed", "mean", "std")} if use_data else None
    fp = make_fingerprint(cfg.model_dump(exclude={"top_k", "num_candidates"}), windows, space.to_dict(), weights,
                          dev.type, data_id)
    return space, candidates, fp, inputs, targets


def _finish_log(log_path: Path, records: list[dict], keys: list[str], names: list[str]) -> list[dict]:
    """Set-level proxies scored over the whole set, every record's scores in the configured order,
    the log rewritten in sample order when it is not already."""
    set_level = [n for n in names if proxies.is_set_level(n)]
    for name in set_level:
        values = proxies.combine_set(name, [r["terms"] for r in records])
        for r, v in zip(records, values, strict=True):
            r["scores"][name] = v
    for r in records:
        r["scores"] = {n: r["scores"][n] for n in names}
    if set_level or _read_log_order(log_path) != keys:
        _rewrite(log_path, records)
    return records


def _open_log(out: Path, fp: str, wanted: set[str], names: list[str]) -> dict[str, dict]:
    """Prepare `out` for appending scores: the records already there when they were made by this
    run (`fp`), else an empty log. The previous summary is dropped before the log changes, so the
    outputs never describe different runs (a kill then leaves a partial log and no summary)."""
    out.mkdir(parents=True, exist_ok=True)
    mark(out, "proxy")
    log_path, fp_path = out / SCORES, out / FINGERPRINT
    old_fp = fp_path.read_text().strip() if fp_path.exists() else None
    if old_fp == fp:
        done = _read_log(log_path, wanted, names)
    else:
        done = {}
        if log_path.exists() and log_path.stat().st_size:
            print(f"warning: {log_path} was made with other params or inputs; starting over", flush=True)
        log_path.write_text("")
        tmp = fp_path.with_name(f"{fp_path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(fp + "\n")
        os.replace(tmp, fp_path)
    for name in ("top_k.json", "metrics.json", SHARD):
        (out / name).unlink(missing_ok=True)
    return done


def _score(scorer: Scorer, todo: list[tuple[str, Arch]], done: dict[str, dict], log_path: Path | None,
           info: DistInfo, bar: dict[str, Any]) -> None:
    """Score `todo` into `done` and append each record to `log_path` (rank 0) as soon as it is known.
    Under torchrun, rounds of 4 candidates per rank are scored side by side and gathered in order."""

    def score(items: list[tuple[str, Arch]]) -> list[dict[str, Any]]:
        recs = []
        for _, arch in items:
            res = scorer(arch)
            rec: dict[str, Any] = {"arch": arch.to_dict(), "params": count_params(arch), "flops": count_flops(arch),
                                   "scores": {k: _json_number(v) for k, v in res.scores.items()}}
            if res.terms is not None:
                rec["terms"] = res.terms
            recs.append(rec)
        return recs

    size = 1 if not info.enabled else 4 * info.world_size
    pbar = progress_bar(desc="proxy", unit="candidates", every_s=30, **bar)
    with open(log_path, "a") if log_path is not None else nullcontext() as f:
        try:
            for start in range(0, len(todo), size):
                part = todo[start:start + size]
                for (key, _), rec in zip(part, gather_map(score, part, info), strict=True):
                    if f is not None:
                        f.write(json.dumps(rec) + "\n")
                    done[key] = rec
                if f is not None:
                    f.flush()
                pbar.update(len(part))
            if f is not None:
                os.fsync(f.fileno())
        finally:
            pbar.close()


def _json_number(v: float) -> float | None:
    """JSON has no NaN/Inf: a proxy that is not finite for a candidate is recorded as null (and ranks last)."""
    return float(v) if math.isfinite(v) else None


def _sort_value(v: float | None) -> float:
    return -math.inf if v is None else v


def _read_log_order(path: Path) -> list[str]:
    keys = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                keys.append(Arch.from_dict(json.loads(line)["arch"]).key())
            except (ValueError, KeyError, TypeError, ArchError):
                raise ArtifactError(f"{path}:{lineno}: not a score record") from None
    return keys


def _top_k(records: list[dict], by: str, k: int) -> list[dict]:
    # stable: ties keep the sample order
    order = sorted(range(len(records)), key=lambda i: -_sort_value(records[i]["scores"][by]))
    return [{"rank": r + 1, "index": i, **records[i]} for r, i in enumerate(order[:k])]


def _metrics(records: list[dict], names: list[str], scored: int, seconds: float,
             scored_seconds: float) -> dict[str, float]:
    m: dict[str, float] = {
        "num_candidates": len(records),
        "candidates_scored": scored,
        "seconds": round(seconds, 3),
        "seconds_per_candidate": round(scored_seconds / scored, 5) if scored else 0.0,
    }
    cols = {n: [r["scores"][n] for r in records] for n in names}
    for n in names:
        finite = [v for v in cols[n] if v is not None]
        if finite:
            m[f"best_{n}"] = max(finite)
    first = names[0]
    for n in names[1:]:
        pairs = [(a, b) for a, b in zip(cols[first], cols[n], strict=True) if a is not None and b is not None]
        tau = proxies.kendall_tau(*zip(*pairs, strict=True)) if len(pairs) > 1 else math.nan
        if math.isfinite(tau):
            m[f"kendall_tau_{first}_{n}"] = round(tau, 6)
    return flat_metrics(m)

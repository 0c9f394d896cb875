"""`vitnas latency-table`: measure the latency lookup table of the search space on this device.

Times every block config (embed x heads x MLP hidden at the space's token count) and the fixed
parts (stem: patch embed + tokens; tail: final norm + head) of standalone models, then checks the
sum of lookups against the measured end-to-end latency of a few sampled whole models and reports
the mean/max relative error (stored in the table). `search.latency_table` points at the result.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vitnas import tracking
from vitnas.config import Params
from vitnas.data import PreparedData
from vitnas.progress import progress as progress_bar
from vitnas.search.latency import FORMAT as LATENCY_FORMAT
from vitnas.search.latency import measure_table
from vitnas.space import SearchSpace
from vitnas.stages._io import FileKind, check_output_file, flat_metrics, json_format_is
from vitnas.stages._tracked import tracking_on

TABLE = FileKind("latency table", json_format_is(LATENCY_FORMAT))


def _space(params: Params, data_dir_or_space: str | Path | SearchSpace) -> SearchSpace:
    if isinstance(data_dir_or_space, SearchSpace):
        return data_dir_or_space
    from vitnas.stages._inputs import check_data

    data = PreparedData(data_dir_or_space)
    check_data(params, data)
    return params.search_space(num_classes=data.num_classes, in_chans=data.in_chans)


def run(params: Params, data_dir_or_space: str | Path | SearchSpace, out_json: str | Path, *,
        batch_size: int = 1, warmup: int = 10, repeats: int = 50, rounds: int = 5, check_archs: int = 5,
        device: str = "auto", threads: int | None = None, track: bool | None = None,
        progress: bool = True) -> dict[str, float]:
    """Measure the table of the configured space (sized by the data dir, or a given space) into `out_json`
    (which may replace a latency table vitnas wrote, never another file)."""
    check_output_file(out_json, TABLE, inputs=[] if isinstance(data_dir_or_space, SearchSpace) else [data_dir_or_space])
    for name, v, lo in (("batch_size", batch_size, 1), ("repeats", repeats, 1), ("warmup", warmup, 0),
                        ("check_archs", check_archs, 0), ("rounds", rounds, 1)):
        if v < lo:
            raise ValueError(f"{name}: must be >= {lo}, got {v}")
    space = _space(params, data_dir_or_space)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else "cpu" if device == "auto" else device)
    if threads is not None:
        torch.set_num_threads(threads)
    t0 = time.time()
    bar = (lambda jobs: progress_bar(jobs, desc="latency table", unit="timings", every_s=30)) if progress else None
    table = measure_table(space, batch_size=batch_size, warmup=warmup, repeats=repeats, rounds=rounds,
                          check_archs=check_archs, seed=params.search.seed, device=dev, progress=bar)
    out_json = table.save(out_json)
    chk = table.check
    metrics = {"entries": len(table.blocks) + len(table.fixed), "batch_size": batch_size,
               "seconds": round(time.time() - t0, 2)}
    if chk.get("mean_rel_error") is not None:
        metrics |= {"mean_rel_error": chk["mean_rel_error"], "max_rel_error": chk["max_rel_error"]}
    metrics = flat_metrics(metrics)

    dev_name = table.device.get("name", dev.type)
    print(f"wrote {out_json}: {metrics['entries']} entries for {space} on {dev.type} ({dev_name}, "
          f"{table.device['threads']} threads), batch {batch_size}")
    for row in chk.get("archs", []):
        print(f"  predicted {row['predicted_ms']:.4f} ms  measured {row['measured_ms']:.4f} ms  "
              f"error {100 * row['rel_error']:.1f}%")
    if "mean_rel_error" in metrics:
        print(f"lookup sum vs end-to-end over {len(chk['archs'])} models: mean relative error "
              f"{100 * metrics['mean_rel_error']:.1f}%, max {100 * metrics['max_rel_error']:.1f}%", flush=True)

    with tracking.stage_run("latency-table", params={"batch_size": batch_size, "repeats": repeats, "warmup": warmup,
                                                     "device": dev.type, **params.section_params("space")},
                            experiment=params.tracking.experiment, enabled=tracking_on(params, track)) as run_:
        run_.log_metrics(metrics)
        run_.set_tags({"vitnas.device": str(dev_name)})
        run_.log_artifact(out_json)
    return metrics

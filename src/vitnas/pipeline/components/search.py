"""KFP component of the evolutionary search stage."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def search_op(params: str, nproc_per_node: int, checkpoint_root: str, data: dsl.Input[dsl.Dataset],
              supernet: dsl.Input[dsl.Model], search: dsl.Output[dsl.Artifact], metrics: dsl.Output[dsl.Metrics],
              report: dsl.Output[dsl.HTML]):
    """Search the space under the configured constraints (vitnas.stages.search), each generation's candidates
    shared by the GPUs under torchrun; the report shows the Pareto front."""
    import json
    import os

    from vitnas.pipeline.runtime import checkpoint_dir, log_metrics, run_stage, write_report

    ckpt, resume = checkpoint_dir(checkpoint_root, "search")
    # GLiT's hierarchical search trains its level-2 supernet in-process: one process only
    nproc = 1 if json.loads(params)["search"]["strategy"] == "hierarchical" else nproc_per_node
    values = run_stage("search", params, nproc, data.path, os.path.join(supernet.path, "supernet.pt"),
                       search.path, checkpoint_dir=str(ckpt), resume=resume, progress=False)
    log_metrics(metrics, values)
    write_report(report, "search", search.path, values)

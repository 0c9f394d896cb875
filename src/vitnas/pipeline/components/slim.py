"""KFP component of the slimming stage."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def slim_op(params: str, nproc_per_node: int, data: dsl.Input[dsl.Dataset], supernet: dsl.Input[dsl.Model],
            search: dsl.Input[dsl.Artifact], slim: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics],
            report: dsl.Output[dsl.HTML]):
    """Slim the searched architecture to the budget and prune it physically (vitnas.stages.slim); the report
    shows the kept widths."""
    import os

    from vitnas.pipeline.runtime import log_metrics, run_stage, write_report

    values = run_stage("slim", params, nproc_per_node, data.path, os.path.join(supernet.path, "supernet.pt"),
                       os.path.join(search.path, "best_arch.json"), slim.path, progress=False)
    log_metrics(metrics, values)
    write_report(report, "slim", slim.path, values)

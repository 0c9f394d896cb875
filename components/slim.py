"""KFP component of the slimming stage."""

from kfp import dsl

from components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def slim_op(params: str, nproc_per_node: int, data: dsl.Input[dsl.Dataset], supernet: dsl.Input[dsl.Model],
            search: dsl.Input[dsl.Artifact], slim: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics]):
    """Slim the searched architecture to the budget and prune it physically (vitnas.stages.slim)."""
    import os

    from components.runtime import log_metrics, run_stage

    log_metrics(metrics, run_stage("slim", params, nproc_per_node, data.path,
                                   os.path.join(supernet.path, "supernet.pt"),
                                   os.path.join(search.path, "best_arch.json"), slim.path, progress=False))

"""KFP component of the retrain stage."""

from kfp import dsl

from components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def retrain_op(params: str, nproc_per_node: int, data: dsl.Input[dsl.Dataset], supernet: dsl.Input[dsl.Model],
               slim: dsl.Input[dsl.Model], retrain: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics]):
    """Train the slimmed architecture to convergence (vitnas.stages.retrain), under torchrun on several GPUs."""
    import os
    import tempfile

    from components.runtime import log_metrics, run_stage

    with tempfile.TemporaryDirectory() as ckpt:
        log_metrics(metrics, run_stage("retrain", params, nproc_per_node, data.path,
                                       os.path.join(supernet.path, "supernet.pt"), slim.path, retrain.path,
                                       checkpoint_dir=ckpt, progress=False))

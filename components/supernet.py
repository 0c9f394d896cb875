"""KFP component of the supernet training stage."""

from kfp import dsl

from components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def supernet_op(params: str, nproc_per_node: int, data: dsl.Input[dsl.Dataset], supernet: dsl.Output[dsl.Model],
                metrics: dsl.Output[dsl.Metrics]):
    """Train the weight-entangled supernet (vitnas.stages.supernet), under torchrun on several GPUs."""
    import tempfile

    from components.runtime import log_metrics, run_stage

    with tempfile.TemporaryDirectory() as ckpt:
        log_metrics(metrics, run_stage("supernet", params, nproc_per_node, data.path, supernet.path,
                                       checkpoint_dir=ckpt, progress=False))

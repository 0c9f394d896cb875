"""KFP component of the supernet training stage."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def supernet_op(params: str, nproc_per_node: int, checkpoint_root: str, trainjob: str,
                data: dsl.Input[dsl.Dataset], supernet: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics],
                report: dsl.Output[dsl.HTML]):
    """Train the weight-entangled supernet (vitnas.stages.supernet), under torchrun on several GPUs, or as a
    multi-node Kubeflow Trainer TrainJob when `trainjob` is set (--nodes)."""
    from vitnas.pipeline.runtime import checkpoint_dir, log_metrics, run_stage, write_report

    ckpt, resume = checkpoint_dir(checkpoint_root, "supernet")
    values = run_stage("supernet", params, nproc_per_node, data.path, supernet.path, checkpoint_dir=str(ckpt),
                       resume=resume, progress=False, trainjob=trainjob)
    log_metrics(metrics, values)
    write_report(report, "supernet", supernet.path, values)

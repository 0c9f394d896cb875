"""KFP component of the retrain stage."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def retrain_op(params: str, nproc_per_node: int, checkpoint_root: str, trainjob: str,
               data: dsl.Input[dsl.Dataset], supernet: dsl.Input[dsl.Model], slim: dsl.Input[dsl.Model],
               retrain: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics], report: dsl.Output[dsl.HTML],
               test_confusion: dsl.Output[dsl.ClassificationMetrics]):
    """Train the slimmed architecture to convergence (vitnas.stages.retrain), under torchrun on several GPUs
    or as a multi-node TrainJob (--nodes); the test split's confusion matrix goes to the KFP UI."""
    import os

    from vitnas.pipeline.runtime import checkpoint_dir, log_confusion, log_metrics, run_stage, write_report

    ckpt, resume = checkpoint_dir(checkpoint_root, "retrain")
    values = run_stage("retrain", params, nproc_per_node, data.path, os.path.join(supernet.path, "supernet.pt"),
                       slim.path, retrain.path, checkpoint_dir=str(ckpt), resume=resume, progress=False,
                       trainjob=trainjob)
    log_metrics(metrics, values)
    write_report(report, "retrain", retrain.path, values)
    log_confusion(test_confusion, retrain.path)

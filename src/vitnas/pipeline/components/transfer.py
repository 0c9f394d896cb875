"""KFP component of the transfer evaluation stage."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def transfer_op(params: str, data: dsl.Input[dsl.Dataset], retrain: dsl.Input[dsl.Model],
                transfer: dsl.Output[dsl.Artifact], metrics: dsl.Output[dsl.Metrics], report: dsl.Output[dsl.HTML]):
    """Fine-tune the retrained model on the transfer targets and evaluate it (vitnas.stages.transfer)."""
    from vitnas.pipeline.runtime import log_metrics, run_stage, write_report

    values = run_stage("transfer", params, 1, data.path, retrain.path, transfer.path, progress=False)
    log_metrics(metrics, values)
    write_report(report, "transfer", transfer.path, values)

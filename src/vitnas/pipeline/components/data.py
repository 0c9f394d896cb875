"""KFP component of the data stage."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def data_op(params: str, data: dsl.Output[dsl.Dataset], metrics: dsl.Output[dsl.Metrics]):
    """Prepare the dataset splits (vitnas.stages.data)."""
    from vitnas.pipeline.runtime import log_metrics, run_stage

    log_metrics(metrics, run_stage("data", params, 1, data.path))

"""KFP component of the proxy scoring stage."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def proxy_op(params: str, data: dsl.Input[dsl.Dataset], proxy: dsl.Output[dsl.Artifact],
             metrics: dsl.Output[dsl.Metrics]):
    """Score sampled candidates with training-free proxies (vitnas.stages.proxy)."""
    from vitnas.pipeline.runtime import log_metrics, run_stage

    log_metrics(metrics, run_stage("proxy", params, 1, data.path, proxy.path, progress=False))

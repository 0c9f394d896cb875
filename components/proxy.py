"""KFP component of the proxy scoring stage."""

from kfp import dsl

from components.image import image


@dsl.component(base_image=image(), install_kfp_package=False)
def proxy_op(params_json: str, data: dsl.Input[dsl.Dataset], proxy: dsl.Output[dsl.Artifact],
             metrics: dsl.Output[dsl.Metrics]):
    """Score sampled candidates with training-free proxies (vitnas.stages.proxy)."""
    import json

    from vitnas.config import parse_params
    from vitnas.stages import proxy as stage

    values = stage.run(parse_params(json.loads(params_json)), data.path, proxy.path, progress=False)
    for name, value in values.items():
        metrics.log_metric(name, value)

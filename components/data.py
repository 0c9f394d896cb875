"""KFP component of the data stage."""

from kfp import dsl

from components.image import image


@dsl.component(base_image=image(), install_kfp_package=False)
def data_op(params_json: str, data: dsl.Output[dsl.Dataset], metrics: dsl.Output[dsl.Metrics]):
    """Prepare the dataset splits (vitnas.stages.data)."""
    import json

    from vitnas.config import parse_params
    from vitnas.stages import data as stage

    values = stage.run(parse_params(json.loads(params_json)), data.path)
    for name, value in values.items():
        metrics.log_metric(name, value)

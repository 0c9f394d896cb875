"""KFP component of the slimming stage."""

from kfp import dsl

from components.image import image


@dsl.component(base_image=image(), install_kfp_package=False)
def slim_op(params_json: str, data: dsl.Input[dsl.Dataset], supernet: dsl.Input[dsl.Model],
            search: dsl.Input[dsl.Artifact], slim: dsl.Output[dsl.Model], metrics: dsl.Output[dsl.Metrics]):
    """Slim the searched architecture to the budget and prune it physically (vitnas.stages.slim)."""
    import json
    import os

    from vitnas.config import parse_params
    from vitnas.stages import slim as stage

    values = stage.run(parse_params(json.loads(params_json)), data.path, os.path.join(supernet.path, "supernet.pt"),
                       os.path.join(search.path, "best_arch.json"), slim.path, progress=False)
    for name, value in values.items():
        metrics.log_metric(name, value)

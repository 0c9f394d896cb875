"""KFP component of the supernet training stage."""

from kfp import dsl

from components.image import image


@dsl.component(base_image=image(), install_kfp_package=False)
def supernet_op(params_json: str, data: dsl.Input[dsl.Dataset], supernet: dsl.Output[dsl.Model],
                metrics: dsl.Output[dsl.Metrics]):
    """Train the weight-entangled supernet (vitnas.stages.supernet)."""
    import json
    import tempfile

    from vitnas.config import parse_params
    from vitnas.stages import supernet as stage

    with tempfile.TemporaryDirectory() as ckpt:
        values = stage.run(parse_params(json.loads(params_json)), data.path, supernet.path, checkpoint_dir=ckpt,
                           progress=False)
    for name, value in values.items():
        metrics.log_metric(name, value)

"""KFP component of the evolutionary search stage."""

from kfp import dsl

from components.image import image


@dsl.component(base_image=image(), install_kfp_package=False)
def search_op(params_json: str, data: dsl.Input[dsl.Dataset], supernet: dsl.Input[dsl.Model],
              search: dsl.Output[dsl.Artifact], metrics: dsl.Output[dsl.Metrics]):
    """Search the space under the configured constraints (vitnas.stages.search)."""
    import json
    import os
    import tempfile

    from vitnas.config import parse_params
    from vitnas.stages import search as stage

    with tempfile.TemporaryDirectory() as ckpt:
        values = stage.run(parse_params(json.loads(params_json)), data.path,
                           os.path.join(supernet.path, "supernet.pt"), search.path, checkpoint_dir=ckpt,
                           progress=False)
    for name, value in values.items():
        metrics.log_metric(name, value)

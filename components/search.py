"""KFP component of the evolutionary search stage."""

from kfp import dsl

from components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def search_op(params: str, data: dsl.Input[dsl.Dataset], supernet: dsl.Input[dsl.Model],
              search: dsl.Output[dsl.Artifact], metrics: dsl.Output[dsl.Metrics]):
    """Search the space under the configured constraints (vitnas.stages.search)."""
    import os
    import tempfile

    from components.runtime import log_metrics, run_stage

    with tempfile.TemporaryDirectory() as ckpt:
        log_metrics(metrics, run_stage("search", params, 1, data.path, os.path.join(supernet.path, "supernet.pt"),
                                       search.path, checkpoint_dir=ckpt, progress=False))

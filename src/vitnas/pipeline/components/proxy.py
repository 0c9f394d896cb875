"""KFP components of the proxy scoring stage: one step, or K shards fanned out with `dsl.ParallelFor`
and a merge step (`--proxy-shards K` at compile time)."""

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def proxy_op(params: str, nproc_per_node: int, data: dsl.Input[dsl.Dataset], proxy: dsl.Output[dsl.Artifact],
             metrics: dsl.Output[dsl.Metrics]):
    """Score sampled candidates with training-free proxies (vitnas.stages.proxy), under torchrun on several GPUs."""
    from vitnas.pipeline.runtime import log_metrics, run_stage

    log_metrics(metrics, run_stage("proxy", params, nproc_per_node, data.path, proxy.path, progress=False))


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def proxy_plan_op(params: str, num_shards: int) -> list:
    """One spec per shard (its stage params and its index) for the ParallelFor to iterate over."""
    from vitnas.pipeline.runtime import shard_specs

    return shard_specs(params, num_shards)


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def proxy_shard_op(spec: str, nproc_per_node: int, data: dsl.Input[dsl.Dataset],
                   proxy_shard: dsl.Output[dsl.Artifact]):
    """Score candidates k, k + K, ... (one pod of the ParallelFor fan-out; `spec` from proxy_plan_op)."""
    import json

    from vitnas.pipeline.runtime import run_stage

    s = json.loads(spec)
    run_stage("proxy", s["params"], nproc_per_node, data.path, proxy_shard.path, shard=[s["shard"], s["num_shards"]],
              progress=False)


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def proxy_merge_op(params: str, data: dsl.Input[dsl.Dataset], shards: dsl.Input[list[dsl.Artifact]],
                   proxy: dsl.Output[dsl.Artifact], metrics: dsl.Output[dsl.Metrics]):
    """Check the shards and write the proxy stage's outputs from them, as one step would."""
    from vitnas.pipeline.runtime import log_metrics, run_stage

    log_metrics(metrics, run_stage("proxy", params, 1, data.path, proxy.path, merge=[s.path for s in shards],
                                   progress=False))

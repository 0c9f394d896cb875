"""One Kubeflow component per pipeline stage, plus the `init` step that validates the parameters.

Each stage component is a thin lightweight component running in the project image: its body only
calls `vitnas.stages.<stage>.run(...)` (through `vitnas.pipeline.runtime.run_stage`, which adds
torchrun for multi-GPU training), so the pipeline and `dvc repro` execute the same code.

The components are imported lazily: inside a running component, kfp is only its runtime subset
(no `dsl.component`), and the bodies import `vitnas.pipeline.runtime` alone.
"""

import importlib

_MODULES = {"data_op": "data", "init_op": "init", "proxy_op": "proxy", "proxy_plan_op": "proxy",
            "proxy_shard_op": "proxy", "proxy_merge_op": "proxy", "retrain_op": "retrain", "search_op": "search",
            "slim_op": "slim", "supernet_op": "supernet", "transfer_op": "transfer"}
__all__ = sorted(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(importlib.import_module(f"vitnas.pipeline.components.{_MODULES[name]}"), name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")

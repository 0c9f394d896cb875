"""KFP component of the pipeline's first step: typed parameters + params_json -> validated params.

Its signature has one input per typed parameter (`vitnas.pipeline.runtime.typed_params`), so it is
generated from `vitnas.config.Params` rather than written out: KFP lightweight components ship
their function's source, so the generated source is registered with `linecache`, where
`inspect.getsource` (which KFP uses) finds it.
"""

import functools
import linecache

from kfp import dsl

from vitnas.pipeline.components.image import DEFAULT_IMAGE
from vitnas.pipeline.runtime import typed_params
from vitnas.stages.contract import ORDER

_SOURCE_NAME = "<vitnas-generated init_op>"


def init_source() -> str:
    """The Python source of the init component's function."""
    typed = typed_params()
    args = "".join(f"    {p.name}: {p.type.__name__},\n" for p in typed)
    values = "".join(f"        {p.name!r}: {p.name},\n" for p in typed)
    outputs = ", ".join(f"({s!r}, str)" for s in ORDER)
    return (
        "from typing import NamedTuple\n\n\n"
        "def init_op(\n    params_json: str,\n" + args + f") -> NamedTuple('StageParams', [{outputs}]):\n"
        '    """Merge the typed parameters into params_json, validate them, open the MLflow parent run;\n'
        '    one output per stage: the params.yaml keys that stage reads, as JSON."""\n'
        "    from collections import namedtuple\n\n"
        "    from vitnas.pipeline.runtime import init_pipeline\n\n"
        "    per_stage = init_pipeline(params_json, {\n" + values + "    })\n"
        f"    return namedtuple('StageParams', {list(ORDER)!r})(**per_stage)\n"
    )


@functools.cache
def init_op():
    """The init component (built once per process)."""
    source = init_source()
    linecache.cache[_SOURCE_NAME] = (len(source), None, source.splitlines(keepends=True), _SOURCE_NAME)
    namespace: dict = {"__name__": __name__}
    exec(compile(source, _SOURCE_NAME, "exec"), namespace)
    return dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)(namespace["init_op"])

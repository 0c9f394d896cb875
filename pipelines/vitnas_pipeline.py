"""The vitnas Kubeflow pipeline (thin entry point; the DAG lives in `vitnas.pipeline.dag`).

    python pipelines/vitnas_pipeline.py [--out vitnas_pipeline.yaml] [--params params.yaml]

compiles it, as `vitnas pipeline compile` does.
"""

from vitnas.pipeline.dag import ClusterOptions, build, compile_pipeline, run_local, submit  # noqa: F401

if __name__ == "__main__":
    import sys

    from vitnas.cli import app

    app(["pipeline", "compile", *sys.argv[1:]])

"""The Kubeflow side of vitnas: one component per stage (`vitnas.pipeline.components`), what their
bodies run in the containers (`vitnas.pipeline.runtime`), and the DAG that compiles, runs locally
or is submitted (`vitnas.pipeline.dag`). The top-level `components/` and `pipelines/` folders are
thin entry points to these for users who look for them there."""

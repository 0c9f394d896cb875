"""The container image every component runs in.

The decorators only need a placeholder: `vitnas.pipeline.dag.build` sets each task's image
to the one given at compile time (`vitnas pipeline compile --image ... --image-tag ...`).
"""

DEFAULT_REPOSITORY = "ghcr.io/vitnas/vitnas"
DEFAULT_IMAGE = f"{DEFAULT_REPOSITORY}:latest"

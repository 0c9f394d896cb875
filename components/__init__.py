"""The pipeline's Kubeflow components: one per stage plus `init_op` (thin entry point; they live
in `vitnas.pipeline.components`, so the installed package carries them into the image)."""

from vitnas.pipeline.components import (
    __all__,  # noqa: F401
    __getattr__,  # noqa: F401
)

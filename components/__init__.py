"""One Kubeflow component per pipeline stage.

Each is a thin lightweight component running in the project image: its body only calls
`vitnas.stages.<stage>.run(...)`, so the pipeline and `dvc repro` execute the same code.
"""

from components.data import data_op
from components.supernet import supernet_op

__all__ = ["data_op", "supernet_op"]

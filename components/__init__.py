"""One Kubeflow component per pipeline stage.

Each is a thin lightweight component running in the project image: its body only calls
`vitnas.stages.<stage>.run(...)`, so the pipeline and `dvc repro` execute the same code.
"""

from components.data import data_op
from components.proxy import proxy_op
from components.search import search_op
from components.slim import slim_op
from components.supernet import supernet_op

__all__ = ["data_op", "proxy_op", "search_op", "slim_op", "supernet_op"]

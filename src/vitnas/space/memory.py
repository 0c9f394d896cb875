"""Memory a model needs, estimated from exact counts before anything is built.

A space, an arch.json, a supernet file or a dataset description can ask for any size; building it
first and failing later can take the machine down. `check_fits` refuses, with one line naming the
field and the estimate, what would not fit in memory: the limit is `VITNAS_MEMORY_LIMIT` (bytes, or
with a K/M/G/T suffix) when set, else the machine's physical memory.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from vitnas.errors import ArchError
from vitnas.space.cost import count_params

if TYPE_CHECKING:  # annotations only: arch.py imports this module to check what it loads
    from vitnas.space.arch import Arch

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
LIMIT_ENV = "VITNAS_MEMORY_LIMIT"


def train_bytes(arch: Arch) -> tuple[int, int]:
    """(parameter bytes, activation bytes) of training `arch` at batch 1 in float32.

    Parameters: weights, gradients and two AdamW moments (16 bytes each). Activations kept for the
    backward pass, per block and token: the block input, the norms, q/k/v, the attention output and
    projection, the MLP hidden twice (before and after GELU), plus the attention probabilities
    (heads x tokens per token). A lower bound of what a step needs; batches scale the second term.
    """
    weights = 16 * count_params(arch)
    act = 0
    for i in range(arch.depth):
        n_i = arch.tokens_in(i)
        act += n_i * (5 * arch.embed_dim + 4 * arch.qkv_dim[i] + 2 * arch.mlp_hidden[i] + 2 * arch.num_heads[i] * n_i)
    return weights, 4 * act


def memory_limit() -> int:
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if raw:
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)i?[bB]?", raw)
        if not m:
            raise ArchError(f"{LIMIT_ENV}: expected bytes with an optional K/M/G/T suffix, got {raw!r}")
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**40


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_fits(arch: Arch, what: str = "arch") -> None:
    """Raise `ArchError` ("<field>: ...") when training `arch` would not fit in memory."""
    weights, act = train_bytes(arch)
    limit = memory_limit()
    if weights + act > limit:
        field = "embed_dim" if weights >= act else "img_size"
        raise ArchError(f"{field}: {what} needs about {gib(weights + act)} to train at batch 1 "
                        f"({count_params(arch):,} parameters: {gib(weights)}; activations: {gib(act)}), more than "
                        f"the {gib(limit)} of memory here (set {LIMIT_ENV} to change the limit)")

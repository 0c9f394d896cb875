"""Numbers the way people read them, in messages, reports and summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence


def human(v: float) -> str:
    """14400 -> '14.4k', 999999 -> '1M', 5.8e6 -> '5.8M' (3 significant digits); below 1000 an
    integer as itself, a fraction to 4 significant digits (0.8125); NaN and inf as Python writes them."""
    if not math.isfinite(v):
        return str(v)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale * 0.9995:
            x = v / scale
            return f"{x:.3g}{suffix}" if abs(x) < 999.5 else f"{round(x)}{suffix}"
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def plain(values: Sequence[float]) -> list:
    """Whole numbers as ints ([1.0, 1.5] -> [1, 1.5]): choices printed as they were written."""
    return [int(v) if float(v).is_integer() else v for v in values]

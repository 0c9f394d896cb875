"""AutoFormer's 2-D relative position, computed on its small tables inside one fused attention call.

The model (Chen et al., AutoFormer, ICCV 2021; `RelativePosition2D_super` in its code): each
attention layer has a key module and a value module, each holding a vertical and a horizontal
table of `2 * clip + 2` rows of head-dim entries. For patch tokens i, j at grid rows/cols
(y, x) the embedding is `r[i, j] = T_v[clip(y_j - y_i)] + T_h[clip(x_j - x_i)]` (distances shifted by
`clip + 1`); any pair involving the CLS token uses row 0 of both tables. Then

    logits_ij = scale * (q_i . k_j + q_i . r_k[i, j])        out_i = sum_j attn_ij (v_j + r_v[i, j])

AutoFormer gathers `r` into an N x N x head_dim tensor and back-propagates through that gather (a
scatter into 30 table rows from N^2 places): 3.99x a static ViT's step on CPU. Here nothing N x N
is built or indexed. The distance index of a pair only depends on the two rows (or the two
columns), so

- key term: `q @ T^T` against the (stacked) tables gives every query's score for every table row;
  `G_v[i, y] = q_i . T_v[idx(y_i, y)]` is a gather of those ([B, H, N, grid] entries), likewise
  `G_h`; then `q_i . r_k[i, j] = G_v[i, y_j] + G_h[i, x_j]`, which is a dot product of `[q_i, G_v[i],
  G_h[i], c_i]` with `[k_j, onehot(y_j), onehot(x_j), [j is CLS]]` (`c_i = q_i . (T_v[0] + T_h[0])`,
  the CLS key's term). The CLS query takes row 0 for every key, a shift of its whole row.
- value term: appending the same one-hot columns to v makes the attention output also carry, per
  query, the attention mass on each key row, each key column and the CLS key; adding those into
  their table rows (a scatter over [B, H, N, grid] entries) and multiplying by the tables gives
  `sum_j attn_ij r_v[i, j]`.

So one `scaled_dot_product_attention` call on head dim `head_dim + 2 * grid + 1` (zero-padded to a
multiple of 16) does all of it
(fused kernels, no materialised attention matrix), and every gradient is a matmul.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_


class RelPosTables(nn.Module):
    """One of AutoFormer's `RelativePosition2D_super`: a vertical and a horizontal table."""

    def __init__(self, head_dim: int, clip: int) -> None:
        super().__init__()
        self.head_dim, self.clip = head_dim, clip
        self.table_v = nn.Parameter(torch.empty(2 * clip + 2, head_dim))
        self.table_h = nn.Parameter(torch.empty(2 * clip + 2, head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        trunc_normal_(self.table_v, std=0.02)  # AutoFormer's init
        trunc_normal_(self.table_h, std=0.02)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, clip={self.clip}"


def _grid_consts(grid: int, clip: int, device: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_make_grid_consts`, cached in eager mode. Never under torch.export or torch.compile: tensors
    made while tracing are fake, and a cached one would poison later eager calls."""
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return _make_grid_consts(grid, clip, device, width)
    return _cached_grid_consts(grid, clip, device, width)


def _make_grid_consts(grid: int, clip: int, device: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(table-row index [1 + grid^2, width], key one-hots [1 + grid^2, width]) for CLS + a grid.

    Columns: `grid` key rows, `grid` key columns, the CLS key, then zero padding. For query n and
    column m the index is the row of the stacked table `[T_v; T_h; T_v[0] + T_h[0]; 0]` that pairs
    them: `T_v[idx(y_n, m)]`, `T_h[idx(x_n, m)]`, the CLS row, and the zero row for padding. The CLS
    query takes row 0 of `T_v` / `T_h` for every key, as AutoFormer."""
    rows = 2 * clip + 2
    r = torch.arange(grid)
    dist = (r[None, :] - r[:, None]).clamp(-clip, clip) + clip + 1  # [own coord, other coord]
    n = grid * grid
    tok = torch.arange(n)
    index = torch.full((n + 1, width), 2 * rows + 1, dtype=torch.long)  # padding: the zero row
    index[1:, :grid] = dist[tok // grid]
    index[1:, grid:2 * grid] = rows + dist[tok % grid]
    index[0, :grid], index[0, grid:2 * grid] = 0, rows
    index[:, 2 * grid] = 2 * rows
    onehot = torch.zeros(n + 1, width)
    onehot[1 + tok, tok // grid] = 1.0  # key row
    onehot[1 + tok, grid + tok % grid] = 1.0  # key column
    onehot[0, 2 * grid] = 1.0  # the CLS key
    return index.to(device), onehot.to(device)


_cached_grid_consts = functools.lru_cache(maxsize=64)(_make_grid_consts)


def _stacked(t: RelPosTables) -> torch.Tensor:
    """`[T_v; T_h; T_v[0] + T_h[0]; 0]`: [2 * (2 * clip + 2) + 2, head_dim]."""
    tv, th = t.table_v, t.table_h
    return torch.cat((tv, th, (tv[0] + th[0]).unsqueeze(0), tv.new_zeros(1, tv.shape[1])))


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_k: RelPosTables,
                      rel_v: RelPosTables, *, scale: float, grid: int, attn_mask: torch.Tensor | None = None,
                      dropout_p: float = 0.0) -> torch.Tensor:
    """Attention with AutoFormer's relative position: q, k, v `[B, H, 1 + grid^2, D]` (CLS first), tables
    of head dim D -> `[B, H, N, D]`. `attn_mask` is an additive key bias, as
    `F.scaled_dot_product_attention` takes it."""
    B, H, N, D = q.shape
    if N != grid * grid + 1:
        raise ValueError(f"relative position: {N} tokens is not CLS + a {grid}x{grid} grid")
    # zero columns up to a multiple of 16 of the total head dim: the fused kernels' backward is
    # much slower on odd widths (measured 1.4x at 93 vs 96 on CPU)
    width = 2 * grid + 1 + (-(D + 2 * grid + 1)) % 16
    index, onehot = _grid_consts(grid, rel_k.clip, str(q.device), width)
    index = index.expand(B, H, N, width)
    keys = onehot.to(q.dtype).expand(B, H, N, width)
    # key term: each query's dot products with the stacked key tables, picked per key row/column/CLS
    extra_q = (q @ _stacked(rel_k).T).gather(-1, index)
    out = F.scaled_dot_product_attention(
        torch.cat((q, extra_q), dim=-1), torch.cat((k, keys), dim=-1), torch.cat((v, keys), dim=-1),
        attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    # value term: attention mass per key row / column / CLS, binned by table row, times the tables
    tv = _stacked(rel_v)
    bins = out.new_zeros(B, H, N, tv.shape[0]).scatter_add(-1, index, out[..., D:])
    return out[..., :D] + bins @ tv

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

- key term: `G_v[i, y] = q_i . T_v[idx(y_i, y)]` (one small matmul per query row against the
  table gathered to [grid, grid, head_dim]), likewise `G_h`; then `q_i . r_k[i, j] = G_v[i, y_j] +
  G_h[i, x_j]`, which is a dot product of `[q_i, G_v[i], G_h[i], c_i]` with `[k_j, onehot(y_j),
  onehot(x_j), [j is CLS]]` (`c_i = q_i . (T_v[0] + T_h[0])`, the CLS key's term). The CLS query's
  row gets the same shift for every key (softmax ignores it), so its extras are 0.
- value term: appending the same one-hot columns to v makes the attention output also carry, per
  query, the attention mass on each key row, each key column and the CLS key; multiplying those
  by the gathered tables gives `sum_j attn_ij r_v[i, j]`.

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


@functools.lru_cache(maxsize=64)
def _grid_consts(grid: int, clip: int, device: str, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance-row index [grid, grid], key one-hots [1 + grid^2, width >= 2 * grid + 1]), per shape."""
    r = torch.arange(grid, device=device)
    idx = (r[None, :] - r[:, None]).clamp(-clip, clip) + clip + 1  # [own coord, other coord]
    n = grid * grid
    onehot = torch.zeros(n + 1, width, device=device)
    tok = torch.arange(n, device=device)
    onehot[1 + tok, tok // grid] = 1.0  # key row
    onehot[1 + tok, grid + tok % grid] = 1.0  # key column
    onehot[0, 2 * grid] = 1.0  # the CLS key
    return idx, onehot


def rel_pos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_k: RelPosTables,
                      rel_v: RelPosTables, *, scale: float, grid: int, head_dim: int | None = None,
                      attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention with AutoFormer's relative position: q, k, v `[B, H, 1 + grid^2, D]` (CLS first)
    -> `[B, H, N, D]`. `head_dim` slices the tables' first D entries (AutoFormer's sampling; D by
    default). `attn_mask` is an additive key bias, as `F.scaled_dot_product_attention` takes it."""
    B, H, N, D = q.shape
    if N != grid * grid + 1:
        raise ValueError(f"relative position: {N} tokens is not CLS + a {grid}x{grid} grid")
    d = D if head_dim is None else head_dim
    s = grid
    # zero columns up to a multiple of 16 of the total head dim: the fused kernels' backward is
    # much slower on odd widths (measured 1.4x at 93 vs 96 on CPU)
    width = 2 * s + 1 + (-(D + 2 * s + 1)) % 16
    idx, onehot = _grid_consts(grid, rel_k.clip, str(q.device), width)
    onehot = onehot.to(q.dtype)
    tk_v, tk_h = rel_k.table_v[:, :d], rel_k.table_h[:, :d]
    tv_v, tv_h = rel_v.table_v[:, :d], rel_v.table_h[:, :d]
    qp = q[:, :, 1:].reshape(B, H, s, s, D)  # query (row, col)
    g_v = torch.einsum("bhyxd,yzd->bhyxz", qp, tk_v[idx]).reshape(B, H, N - 1, s)
    g_h = torch.einsum("bhyxd,xzd->bhyxz", qp, tk_h[idx]).reshape(B, H, N - 1, s)
    c = (qp.reshape(B, H, N - 1, D) @ (tk_v[0] + tk_h[0])).unsqueeze(-1)
    extra_q = torch.cat((g_v, g_h, c, c.new_zeros(B, H, N - 1, width - 2 * s - 1)), dim=-1)
    extra_q = torch.cat((extra_q.new_zeros(B, H, 1, width), extra_q), dim=2)  # CLS query: no shift
    keys = onehot.expand(B, H, N, width)
    out = F.scaled_dot_product_attention(
        torch.cat((q, extra_q), dim=-1), torch.cat((k, keys), dim=-1), torch.cat((v, keys), dim=-1),
        attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    mass = out[:, :, 1:, D:]  # patch queries: attention mass per key row, key column, CLS key
    p_v = mass[..., :s].reshape(B, H, s, s, s)
    p_h = mass[..., s:2 * s].reshape(B, H, s, s, s)
    p_c = mass[..., 2 * s:2 * s + 1]
    cls_row = tv_v[0] + tv_h[0]
    rel = (torch.einsum("bhyxz,yzd->bhyxd", p_v, tv_v[idx]) + torch.einsum("bhyxz,xzd->bhyxd", p_h, tv_h[idx])
           ).reshape(B, H, N - 1, D) + p_c * cls_row
    first = out[:, :, :1, D:]  # the CLS query: every pair is row 0, so its total attention mass
    rel = torch.cat(((first[..., :s].sum(-1, keepdim=True) + first[..., 2 * s:2 * s + 1]) * cls_row, rel), dim=2)
    return out[..., :D] + rel

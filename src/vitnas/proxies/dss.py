"""TF-TAS DSS-indicator (Zhou et al., CVPR 2022), computed as the paper defines it.

Objective: the candidate (randomly initialised, eval mode: no dropout or drop path) runs one
forward on a single all-ones image `[1, C, H, W]` (no data, no labels, no seed) and
`L = sum(logits)` is backpropagated once (TF-TAS backprops the sum of the output). Then, with
`W` a weight matrix the candidate uses and `G = dL/dW`:

- synaptic diversity of each MSA block: `||G_qkv||_* ||W_qkv||_* + ||G_proj||_* ||W_proj||_*`
  (nuclear norms; qkv as timm's `[3 * heads * head_dim, embed]` matrix);
- synaptic saliency of each MLP block: `sum |W_fc1 * G_fc1| + sum |W_fc2 * G_fc2|`;
- DSS = sum of the MSA terms + sum of the MLP terms.

Through a supernet, `W` and `G` are the used top-left slices of the shared weights and of their
full-size gradients, so the value equals that of the extracted standalone subnet. Every term
gets a real gradient (the public code's qkv term is 0). Gradients are taken with
`torch.autograd.grad`, so `.grad` is untouched and nothing carries over between candidates.
"""

from __future__ import annotations

import torch

from vitnas.proxies._linalg import nuclear_norms, weight_nuclear_norms
from vitnas.proxies._model import Candidate, scoring, unique_params

TERMS = ("qkv", "proj", "fc1", "fc2")


def compute_terms(cand: Candidate) -> dict:
    """Per-layer DSS terms of a candidate (see `dss_terms`)."""
    weights = cand.block_weights()
    params = unique_params(weights)
    with scoring(cand.model, params):
        out = cand.forward(cand.ones())
        grads = torch.autograd.grad(out.sum(), params)
    grad_of = {id(p): g for p, g in zip(params, grads, strict=True)}
    msa = [w for layer in cand.layers for w in (layer.qkv, layer.proj)]
    mlp = [w for layer in cand.layers for w in (layer.fc1, layer.fc2)]
    with torch.no_grad():
        # torch work first, then the numpy worker threads: overlapping the two oversubscribes the
        # cores, and torch's OpenMP regions stall on descheduled threads (measured slower)
        w_nuc = weight_nuclear_norms(msa)
        saliency = torch.stack([
            torch.linalg.vector_norm(w.matrix() * w.view(grad_of[id(w.param)]), ord=1) for w in mlp
        ]).double().cpu().view(-1, 2)  # [layers, (fc1, fc2)]
        g_nuc = nuclear_norms([w.view(grad_of[id(w.param)]) for w in msa])
        diversity = (g_nuc * w_nuc).view(-1, 2)  # [layers, (qkv, proj)]
    qkv, proj = diversity.T.tolist()
    fc1, fc2 = saliency.T.tolist()
    msa_l = diversity.sum(1).tolist()
    mlp_l = saliency.sum(1).tolist()
    msa_total, mlp_total = float(diversity.sum()), float(saliency.sum())
    return {"qkv": qkv, "proj": proj, "fc1": fc1, "fc2": fc2, "msa": msa_l, "mlp": mlp_l,
            "msa_total": msa_total, "mlp_total": mlp_total, "dss": msa_total + mlp_total}

"""Zero-cost baselines (Abdelfattah et al., ICLR 2021), adapted to GELU ViTs.

All act on the weights the candidate uses ("linear weights": qkv, proj, fc1, fc2 of every block
and the classifier), per layer and summed:

- `grad_norm`: sum of `||dL/dW||_F`, L = cross-entropy on a real batch;
- `snip`: sum of `|W * dL/dW|` (the saliency of a multiplicative mask at 1), same L;
- `grasp`: sum of `-(W * H g)`, `g = dL/dW`, H the Hessian (one double backward), same L;
- `fisher`: per MLP hidden unit, `0.5 * mean_batch (sum_tokens a * dL/da)^2` with `a` the GELU
  output feeding fc2 (Turner et al.'s activation Fisher), summed;
- `jacob_cov`: Mellor et al. (v1): correlation of the per-image input gradients of the summed
  logits, `-sum(log(v + k) + 1 / (v + k))` over its eigenvalues, k = 1e-5;
- `naswot`: Mellor et al. (v2): binary code of each image = which MLP hidden units are active.
  In a ViT the non-linearity is GELU, so "active" is pre-activation > 0 (GELU(z) > 0 iff z > 0),
  read from fc1's output (hooks written for ReLU modules see nothing in a ViT). Score = log-det of
  the kernel `K = c c^T + (1 - c)(1 - c)^T` (number of agreeing units between images);
- `synflow`: Tanaka et al.: all weights replaced by their absolute values, an all-ones input,
  `R = sum(output)`, score `sum |W * dR/dW|`. Run in float64 (the product of layer norms
  overflows float32 in deep nets) and the weights are put back exactly afterwards (the very same
  tensors are restored). LayerNorm re-normalises activations at every block, which removes most of
  the layer-size information SynFlow relies on in conv nets; read it with that in mind.
- `params`, `flops`: `vitnas.count_params` / `count_flops` of the arch.

The data-dependent ones share one forward on the batch (and one backward of the cross-entropy,
with a second backward from the same graph for jacob_cov and a double backward for grasp).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitnas.proxies._model import Candidate, ProxyError, scoring, unique_params
from vitnas.space.cost import count_flops, count_params

CE_PROXIES = ("grad_norm", "snip", "grasp", "fisher")  # need inputs and targets
INPUT_PROXIES = ("jacob_cov", "naswot")  # need inputs only
BATCH_PROXIES = CE_PROXIES + INPUT_PROXIES
JACOB_K = 1e-5


def cost_scores(cand: Candidate, names: set[str]) -> dict[str, float]:
    arch = cand.get_arch()
    out = {}
    if "params" in names:
        out["params"] = float(count_params(arch))
    if "flops" in names:
        out["flops"] = float(count_flops(arch))
    return out


def _check_batch(names: set[str], inputs, targets) -> None:
    if inputs is None:
        raise ProxyError(f"{sorted(names)[0]}: needs inputs (a batch of real images [B, C, H, W])")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise ProxyError(f"inputs: expected an image batch [B, C, H, W], got "
                         f"{tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__}")
    ce = sorted(names & set(CE_PROXIES))
    if ce:
        if targets is None:
            raise ProxyError(f"{ce[0]}: needs targets (the labels of the inputs)")
        if not isinstance(targets, torch.Tensor) or targets.shape != inputs.shape[:1]:
            raise ProxyError(f"targets: expected {inputs.shape[0]} labels, got "
                             f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else targets!r}")


def batch_scores(cand: Candidate, names: set[str], inputs: torch.Tensor,
                 targets: torch.Tensor | None) -> dict[str, float]:
    """The data-dependent proxies in `names`, sharing one forward on `inputs`."""
    _check_batch(names, inputs, targets)
    ce = names & set(CE_PROXIES)
    weights = cand.linear_weights()
    params = unique_params(weights)
    x = inputs.to(device=cand.device, dtype=cand.dtype)
    if "jacob_cov" in names:
        x = x.detach().requires_grad_(True)
    y = targets.to(cand.device) if targets is not None else None

    hooks = []
    naswot_k: list[torch.Tensor] = []
    acts: list[torch.Tensor] = []
    if "naswot" in names:
        def code(_module, _args, out):
            c = (out.detach() > 0).flatten(1).to(torch.float32)  # [B, tokens * hidden], exact counts < 2^24
            naswot_k.append((c @ c.T + (1 - c) @ (1 - c).T).double())
        hooks += [layer.fc1_module.register_forward_hook(code) for layer in cand.layers]
    if "fisher" in names:
        def keep(_module, args):
            acts.append(args[0])
        hooks += [layer.fc2_module.register_forward_pre_hook(keep) for layer in cand.layers]

    out: dict[str, float] = {}
    # Double backward needs the math attention kernel (the fused CPU/CUDA kernels have no 2nd derivative).
    kernel = sdpa_kernel(SDPBackend.MATH) if "grasp" in names else contextlib.nullcontext()
    needs_grad = bool(ce) or "jacob_cov" in names
    try:
        with scoring(cand.model, params), kernel, (contextlib.nullcontext() if needs_grad else torch.no_grad()):
            logits = cand.forward(x)
            for h in hooks:
                h.remove()
            hooks = []
            if "jacob_cov" in names:
                (jac,) = torch.autograd.grad(logits.sum(), x, retain_graph=bool(ce))
                out["jacob_cov"] = _jacob_cov(jac)
            if ce:
                loss = F.cross_entropy(logits.float(), y)
                wrt = params + acts
                grads = torch.autograd.grad(loss, wrt, create_graph="grasp" in names)
                g_param = {id(p): g for p, g in zip(params, grads[:len(params)], strict=True)}
                g_acts = grads[len(params):]
                with torch.no_grad():
                    ws = [w.matrix() for w in weights]
                    gs = [w.view(g_param[id(w.param)]).detach() for w in weights]
                    if "grad_norm" in names:
                        out["grad_norm"] = float(sum(torch.linalg.vector_norm(g, dtype=torch.float64) for g in gs))
                    if "snip" in names:
                        out["snip"] = float(sum((w * g).abs().sum(dtype=torch.float64)
                                                for w, g in zip(ws, gs, strict=True)))
                    if "fisher" in names:
                        out["fisher"] = float(sum(
                            (0.5 * ((a.detach() * ga.detach()).sum(1).double() ** 2).mean(0)).sum()
                            for a, ga in zip(acts, g_acts, strict=True)))
                if "grasp" in names:
                    z = sum((g.detach() * g).sum() for g in grads[:len(params)])
                    hg = torch.autograd.grad(z, params, allow_unused=True)
                    hg_of = {id(p): h for p, h in zip(params, hg, strict=True) if h is not None}
                    with torch.no_grad():
                        out["grasp"] = float(-sum((w * w_.view(hg_of[id(w_.param)])).sum(dtype=torch.float64)
                                                  for w, w_ in zip(ws, weights, strict=True) if id(w_.param) in hg_of))
    finally:
        for h in hooks:
            h.remove()
    if "naswot" in names:
        k = torch.stack(naswot_k).sum(0)
        sign, logdet = torch.linalg.slogdet(k)
        if sign <= 0 or not torch.isfinite(logdet):  # identical codes (e.g. duplicate images): regularise
            sign, logdet = torch.linalg.slogdet(k + 1e-6 * k.diagonal().mean() * torch.eye(len(k), dtype=k.dtype,
                                                                                           device=k.device))
        out["naswot"] = float(logdet)
    return out


def _jacob_cov(jac: torch.Tensor) -> float:
    j = jac.reshape(len(jac), -1).double()
    if len(j) < 2:
        corr = torch.ones(1, 1, dtype=torch.float64, device=j.device)
    else:
        corr = torch.nan_to_num(torch.corrcoef(j), nan=0.0)  # a constant gradient row has no correlation
    v = torch.linalg.eigvalsh(corr).clamp(min=0)
    return float(-(torch.log(v + JACOB_K) + 1.0 / (v + JACOB_K)).sum())


def synflow_score(cand: Candidate) -> float:
    """SynFlow in float64 on |weights|; every parameter and buffer is restored (same tensor objects)."""
    model = cand.model
    saved = [(p, p.data) for p in model.parameters()]
    saved_bufs = [(m, name, b) for m in model.modules() for name, b in m.named_buffers(recurse=False)
                  if b is not None and b.is_floating_point()]
    weights = cand.linear_weights()
    params = unique_params(weights)
    try:
        with torch.no_grad():
            for p, data in saved:
                p.data = data.to(torch.float64).abs()
            for m, name, b in saved_bufs:
                setattr(m, name, b.to(torch.float64))
        with scoring(model, params):
            out = cand.forward(cand.ones(torch.float64))
            grads = torch.autograd.grad(out.sum(), params)
        g_of = {id(p): g for p, g in zip(params, grads, strict=True)}
        with torch.no_grad():
            score = sum((w.matrix() * w.view(g_of[id(w.param)])).abs().sum() for w in weights)
        return float(score)
    finally:
        for p, data in saved:
            p.data = data
        for m, name, b in saved_bufs:
            setattr(m, name, b)

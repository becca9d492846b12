"""Distillation losses computed from hidden states, chunked over tokens so [N, V] float32 logits never exist.

For N token rows (batch × sequence, flattened), student hidden states h ``[N, H]`` with LM head W ``[V, H]`` and
teacher hidden states g ``[N, H']`` with head U ``[V, H']``, temperature τ and per-row weights a (KL) and c (CE):

    loss = kl_weight · Σ_n a_n · τ² · KL(softmax(U g_n / τ) ‖ softmax(W h_n / τ))
         + ce_weight · Σ_n c_n · CE(W h_n, label_n)

The τ² factor keeps gradient magnitudes independent of τ (Hinton et al., 2015). Per chunk of rows the logits are
formed, the loss and its gradient with respect to the logits are taken in closed form,

    ∂/∂z_s  [τ² KL] = τ (softmax(z_s/τ) − softmax(z_t/τ)),     ∂/∂z_s [CE] = softmax(z_s) − onehot(label),

and immediately pushed back through the head (∂h = ∂z W, ∂W += ∂zᵀ h), so the peak extra memory is a few
``[chunk, V]`` float32 buffers whatever N is (the approach of Liger-Kernel's fused linear cross-entropy). The
backward pass only scales the stored gradients. :func:`distill_loss_reference` is the plain autograd form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would use here (bf16 under accelerate's mixed precision), else the tensor's."""
    device = tensor.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return tensor.dtype


class _ChunkedDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, t_hidden, t_weight, kl_rows, ce_rows, labels, temperature, kl_weight,
                ce_weight, chunk):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        use_kl = kl_weight > 0 and t_hidden is not None
        use_ce = ce_weight > 0
        if use_kl:
            t_dtype = _compute_dtype(t_hidden)
            tw = t_weight.to(t_dtype)
        tau = float(temperature)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        kl_sum = hidden.new_zeros((), dtype=torch.float32)
        ce_sum = hidden.new_zeros((), dtype=torch.float32)
        loss = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            stop = min(start + chunk, hidden.shape[0])
            h = hidden[start:stop].to(dtype)
            logits = F.linear(h, w).float()  # [c, V]
            grad = None
            if use_kl:
                t_logits = F.linear(t_hidden[start:stop].to(t_dtype), tw).float()
                t_log = torch.log_softmax(t_logits.div_(tau), dim=-1)
                del t_logits
                s_log = torch.log_softmax(logits / tau, dim=-1)
                t_prob = t_log.exp()
                rows = (t_prob * (t_log - s_log)).sum(-1) * (tau * tau)  # [c]
                del t_log
                weights = kl_rows[start:stop].float()
                kl_sum += (weights * rows).sum()
                loss += kl_weight * (weights * rows).sum()
                if need_h or need_w:
                    grad = s_log.exp_().sub_(t_prob).mul_((tau * kl_weight) * weights[:, None])
                del s_log, t_prob
            if use_ce:
                target = labels[start:stop]
                valid = target >= 0
                log_p = torch.log_softmax(logits, dim=-1)
                picked = log_p.gather(-1, target.clamp_min(0)[:, None]).squeeze(-1)
                weights = ce_rows[start:stop].float() * valid
                ce_sum -= (weights * picked).sum()
                loss -= ce_weight * (weights * picked).sum()
                if need_h or need_w:
                    g_ce = log_p.exp_()
                    g_ce[torch.arange(len(target), device=g_ce.device), target.clamp_min(0)] -= 1.0
                    g_ce.mul_((ce_weight * weights)[:, None])
                    grad = g_ce if grad is None else grad.add_(g_ce)
                del log_p
            del logits
            if grad is not None:
                grad = grad.to(dtype)
                if need_h:
                    grad_h[start:stop] = (grad @ w).to(hidden.dtype)
                if need_w:
                    grad_w += (grad.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(kl_sum, ce_sum)
        return loss, kl_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_ce):
        grad_h, grad_w = ctx.saved_tensors
        out_h = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        out_w = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return out_h, out_w, None, None, None, None, None, None, None, None, None


def distill_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    *,
    kl_rows: torch.Tensor,
    ce_rows: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunked KL(+CE) from hidden states. hidden ``[N, H]``, weight ``[V, H]`` (the student's LM head, may be
    tied to the embeddings), teacher_hidden ``[N, H']`` and teacher_weight ``[V, H']`` (None for CE only),
    kl_rows / ce_rows ``[N]`` row weights (0 drops a row: padding; the normaliser goes in here), labels ``[N]``
    (-100 = no label). Returns ``(loss, kl_sum, ce_sum)``: loss is differentiable with respect to hidden and
    weight; the sums (Σ a_n τ²KL_n and Σ c_n CE_n) are detached, for logging."""
    if ce_weight > 0 and (labels is None or ce_rows is None):
        raise ValueError("ce_weight > 0 needs labels and ce_rows")
    if kl_weight > 0 and teacher_hidden is None:
        raise ValueError("kl_weight > 0 needs the teacher's hidden states and LM head")
    dummy = hidden.new_zeros(hidden.shape[0], dtype=torch.float32)
    return _ChunkedDistill.apply(
        hidden, weight, teacher_hidden, teacher_weight, kl_rows,
        ce_rows if ce_rows is not None else dummy,
        labels if labels is not None else dummy.long(),
        temperature, kl_weight, ce_weight, max(1, int(chunk)),
    )


def distill_loss_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    *,
    kl_rows: torch.Tensor,
    ce_rows: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same quantity with full ``[N, V]`` float32 logits and autograd (the float32 reference for tests)."""
    logits = (hidden @ weight.t()).float()
    loss = logits.new_zeros(())
    kl_sum = ce_sum = logits.new_zeros(())
    if kl_weight > 0:
        t_logits = (teacher_hidden @ teacher_weight.t()).float()
        rows = F.kl_div(torch.log_softmax(logits / temperature, -1), torch.log_softmax(t_logits / temperature, -1),
                        log_target=True, reduction="none").sum(-1) * temperature**2
        kl_sum = (kl_rows * rows).sum()
        loss = loss + kl_weight * kl_sum
    if ce_weight > 0:
        rows = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
        ce_sum = (ce_rows * (labels >= 0) * rows).sum()
        loss = loss + ce_weight * ce_sum
    return loss, kl_sum.detach(), ce_sum.detach()


def token_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Per-token regression loss ``[B, T]`` in float32 between ``[B, T, D]`` tensors: ``mse`` (mean over D of the
    squared difference) or ``l2`` (the L2 norm of the difference, Zebra-Llama's ILD)."""
    diff = prediction.float() - target.float()
    if kind == "mse":
        return diff.pow(2).mean(-1)
    if kind == "l2":
        return diff.norm(dim=-1)
    raise ValueError(f"unknown token loss {kind!r}; allowed: mse, l2")


__all__ = ["distill_loss", "distill_loss_reference", "token_loss"]

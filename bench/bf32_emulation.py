"""bf32 arithmetic emulated in fp32, to check its accuracy on a CPU without bf16 units.

bf32 training (backend.model.device) keeps fp32 tensors and lets oneDNN round the two inputs of every matrix multiply to
bf16, summing in fp32. Rounding the inputs of each linear layer's forward product and of both backward products
(input gradient, weight gradient) to bf16, then multiplying in fp32, gives the same numbers up to the order of the
sums. It is slower than plain fp32 and says nothing about speed: `bench/accuracy.py --emulate-bf32` uses it for F1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _bf16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.bfloat16).to(torch.float32)


class _Bf32Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x16, weight16 = _bf16(x), _bf16(weight)
        ctx.save_for_backward(x16, weight16)
        ctx.has_bias = bias is not None
        return F.linear(x16, weight16, bias)

    @staticmethod
    def backward(ctx, grad):
        x16, weight16 = ctx.saved_tensors
        grad16 = _bf16(grad)
        grad_x = grad16 @ weight16 if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = grad16.reshape(-1, grad16.shape[-1]).t() @ x16.reshape(-1, x16.shape[-1])
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
        return _Bf32Linear.apply(x, self.weight, self.bias)
    return F.linear(_bf16(x), _bf16(self.weight), self.bias)


def install() -> None:
    """From now on every nn.Linear of this process computes as bf32 would (the attention's own products excepted)."""
    torch.nn.Linear.forward = _forward

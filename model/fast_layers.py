"""Two of upstream xlstm's layers computed without their slow CPU kernels: same parameters, same math.

Profiling one training step of the factorwise encoder on one CPU thread (demo config, batch 64:
6,656 sequences of 5 tokens) put a quarter of the step in two places (docs/performance.md):

* ``CausalConv1d`` (``xlstm/components/conv.py``) runs a depthwise ``nn.Conv1d`` (``groups =
  channels``, kernel 4).  Its forward is cheap, but ``convolution_backward`` of a depthwise
  convolution over thousands of short sequences takes ~0.3 s a call on CPU, 20 % of the step.
  :class:`FastCausalConv1d` computes the same causal convolution as a sum of ``kernel_size``
  shifted, channel-scaled copies of the input: ``y[t] = b + sum_k w[:, k] * x[t + k - (K - 1)]``
  (zeros before the start), which is what upstream's padded conv followed by dropping the last
  ``K - 1`` outputs computes.
* ``MultiHeadLayerNorm`` (``xlstm/components/ln.py``) normalises each head with ``F.group_norm``
  on a ``(B * S, NH * DH)`` view, whose backward is ~0.14 s a call on CPU for that shape.
  :class:`FastMultiHeadLayerNorm` normalises each head's ``DH`` channels with ``F.layer_norm``
  (group ``g`` of ``group_norm`` is exactly head ``g``'s channels) and applies the same affine.

Both are installed per module by :func:`use_fast_layers`, which swaps the class of the upstream
instances (the subclasses add no state, so parameters, state dicts and checkpoints are unchanged);
upstream is never patched globally.  A configuration the fast forward does not cover (a
convolution with a carried state or channel mixing, kernel size 0) runs upstream's own forward.
Under bf16 autocast the per-head norm computes in float32 as upstream's ``group_norm`` does there;
the shifted sum multiplies a bf16 input by float32 weights, so it computes in float32 where
upstream's conv computes in bf16 (the moments of a bf16 step came out closer to float32's:
tests/ray_jobs/test_precision.py).
tests/model/test_fast_layers.py checks outputs and gradients against upstream in float64.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from xlstm.components.conv import CausalConv1d
from xlstm.components.ln import MultiHeadLayerNorm

from model.slstm_fast import check_xlstm_version


class FastCausalConv1d(CausalConv1d):
    """Upstream's causal depthwise convolution as a sum of shifted copies (no conv kernel)."""

    def forward(self, x: torch.Tensor, conv_state: Optional[torch.Tensor] = None,
                return_last_state: bool = False) -> torch.Tensor:
        if conv_state is not None or return_last_state or self.conv is None or self.groups != self.config.feature_dim:
            return super().forward(x, conv_state=conv_state, return_last_state=return_last_state)
        weight = self.conv.weight[:, 0, :]  # (F, K): channel c's kernel
        kernel, length = weight.shape[1], x.shape[1]
        padded = F.pad(x, (0, 0, kernel - 1, 0))  # (B, T + K - 1, F): K - 1 zeros before the start
        y = padded[:, :length] * weight[:, 0]
        for k in range(1, kernel):
            y = y + padded[:, k:k + length] * weight[:, k]
        return y if self.conv.bias is None else y + self.conv.bias  # (B, T, F)


class FastMultiHeadLayerNorm(MultiHeadLayerNorm):
    """Upstream's per-head normalisation with ``F.layer_norm`` over each head's channels."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4:
            raise ValueError(f"MultiHeadLayerNorm expects (B, NH, S, DH), got shape {tuple(input.shape)}")
        heads, width = input.shape[1], input.shape[3]
        if input.dtype in (torch.bfloat16, torch.float16):
            # Normalise in float32, as upstream's group_norm does under autocast (it is on autocast's
            # float32 list on CPU and CUDA; layer_norm is not on CPU's, so it would run in bf16).
            input = input.float()
        z = F.layer_norm(input.transpose(1, 2), (width,), eps=self.eps)  # (B, S, NH, DH)
        weight = self.weight_proxy
        if weight is not None:
            z = z * weight.view(heads, width)
        if self.bias is not None:
            z = z + self.bias.view(heads, width)
        return z.transpose(1, 2)  # (B, NH, S, DH)


_FAST = {CausalConv1d: FastCausalConv1d, MultiHeadLayerNorm: FastMultiHeadLayerNorm}


def use_fast_layers(module: nn.Module) -> int:
    """Switch upstream's ``CausalConv1d`` and ``MultiHeadLayerNorm`` inside ``module`` to the fast
    subclasses (in place, this module only).  Returns the number of layers switched.

    Raises :class:`model.slstm_fast.XlstmVersionError` if xlstm is not the checked version.
    """
    check_xlstm_version()
    switched = 0
    for sub in module.modules():
        fast = _FAST.get(type(sub))
        if fast is not None:
            sub.__class__ = fast
            switched += 1
    return switched


def upstream_layers(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with upstream's layers wherever it runs the fast ones: the reference
    that the tests and ``benchmarks.fast_layers`` compare against (same parameters)."""
    upstream = {fast: slow for slow, fast in _FAST.items()}
    ref = copy.deepcopy(module)
    for sub in ref.modules():
        if type(sub) in upstream:
            sub.__class__ = upstream[type(sub)]
    return ref

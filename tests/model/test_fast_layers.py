"""model.fast_layers against upstream xlstm's own layers: outputs and gradients in float64, and a
whole encoder with and without them."""

from __future__ import annotations

import copy

import pytest
import torch
from xlstm.components.conv import CausalConv1d, CausalConv1dConfig
from xlstm.components.ln import MultiHeadLayerNorm

from model.encoder import XLSTMEncoder
from model.fast_layers import FastCausalConv1d, FastMultiHeadLayerNorm, upstream_layers, use_fast_layers
from model.spec import ModelSpec
from test_encoder import MAC, FULL, small_config, windows

UPSTREAM = {FastCausalConv1d: CausalConv1d, FastMultiHeadLayerNorm: MultiHeadLayerNorm}


def _outputs_and_grads(layer, x: torch.Tensor, *args):
    x = x.clone().requires_grad_(True)
    out = layer(x, *args)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


def _assert_same(fast, ref, atol):
    (out_f, gx_f, g_f), (out_r, gx_r, g_r) = fast, ref
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=atol)
    torch.testing.assert_close(gx_f, gx_r, rtol=0, atol=atol)
    assert g_f.keys() == g_r.keys()
    for name in g_r:
        torch.testing.assert_close(g_f[name], g_r[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("length", [1, 3, 5, 9])
@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv_matches_upstream_in_float64(kernel, length, bias):
    torch.manual_seed(kernel * 100 + length)
    ref = CausalConv1d(CausalConv1dConfig(feature_dim=6, kernel_size=kernel, causal_conv_bias=bias)).double()
    with torch.no_grad():
        ref.conv.weight.normal_()
        if bias:
            ref.conv.bias.normal_()
    fast = copy.deepcopy(ref)
    fast.__class__ = FastCausalConv1d
    x = torch.randn(7, length, 6, dtype=torch.float64)
    _assert_same(_outputs_and_grads(fast, x), _outputs_and_grads(ref, x), atol=1e-12)


def test_causal_conv_is_causal_and_uses_every_tap():
    """Changing x at time s changes outputs at s..s+K-1 only (the agreement above is not vacuous)."""
    torch.manual_seed(0)
    fast = CausalConv1d(CausalConv1dConfig(feature_dim=3, kernel_size=4)).double()
    fast.__class__ = FastCausalConv1d
    x = torch.randn(2, 10, 3, dtype=torch.float64)
    bumped = x.clone()
    bumped[:, 4] += 1.0
    changed = (fast(bumped) - fast(x)).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [t in (4, 5, 6, 7) for t in range(10)]


def test_causal_conv_with_a_carried_state_runs_upstreams_forward():
    torch.manual_seed(1)
    ref = CausalConv1d(CausalConv1dConfig(feature_dim=4, kernel_size=4)).double()
    fast = copy.deepcopy(ref)
    fast.__class__ = FastCausalConv1d
    x, state = torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    for a, b in zip(fast(x, conv_state=state, return_last_state=True), ref(x, conv_state=state, return_last_state=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_multi_head_norm_matches_upstream_in_float64(bias):
    torch.manual_seed(2)
    ref = MultiHeadLayerNorm(ndim=4 * 8, weight=True, bias=bias).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    fast = copy.deepcopy(ref)
    fast.__class__ = FastMultiHeadLayerNorm
    x = 3.0 * torch.randn(5, 4, 6, 8, dtype=torch.float64) + 1.0  # (B, NH, S, DH)
    _assert_same(_outputs_and_grads(fast, x), _outputs_and_grads(ref, x), atol=1e-12)


@pytest.mark.parametrize("path", [FULL, MAC], ids=["h100_layers", "mac_layers"])
def test_encoder_with_fast_layers_matches_upstream_layers(path):
    """Every block type of the shipped layer lists: same outputs, gradients and state dict."""
    torch.manual_seed(3)
    fast = XLSTMEncoder(ModelSpec.of(small_config(path, "model.encoder.hidden_dim=64")), "cpu").eval()
    with torch.no_grad():  # upstream zero-initialises the norms' weights: make every parameter matter
        for p in fast.parameters():
            p.add_(0.1 * torch.randn_like(p))
    kinds = {type(m) for m in fast.modules()}
    assert FastCausalConv1d in kinds and FastMultiHeadLayerNorm in kinds
    assert not kinds & {CausalConv1d, MultiHeadLayerNorm}
    ref = upstream_layers(fast)
    assert use_fast_layers(copy.deepcopy(ref)) == sum(type(m) in UPSTREAM for m in fast.modules())
    assert fast.state_dict().keys() == ref.state_dict().keys()
    x = windows(batch=3, seed=4)
    _assert_same(_outputs_and_grads(fast, x), _outputs_and_grads(ref, x), atol=1e-5)


def test_fast_layers_refuse_another_xlstm_version(monkeypatch):
    """They rely on upstream's layer internals (conv weight layout, weight_proxy): checked version only."""
    import xlstm

    from model.slstm_fast import XlstmVersionError

    ref = upstream_layers(XLSTMEncoder(ModelSpec.of(small_config(MAC)), "cpu"))
    monkeypatch.setattr(xlstm, "__version__", "2.0.7")
    with pytest.raises(XlstmVersionError, match=r"checked against xlstm==2\.0\.6 but xlstm 2\.0\.7"):
        use_fast_layers(ref)
    assert not any(type(m) in UPSTREAM for m in ref.modules())  # nothing switched

"""Encoder shapes, per-layer dropout, sLSTM backends, the fast step vs upstream, neutral weights."""

import copy
import logging
from pathlib import Path

import pytest
import torch
import xlstm
from xlstm.blocks.mlstm.block import mLSTMBlock
from xlstm.blocks.slstm.block import sLSTMBlock
from xlstm.blocks.slstm.cell import sLSTMCell_cuda, sLSTMCell_vanilla

from core.config import load_config
from model.spec import ModelSpec
from model.encoder import XLSTMEncoder
from core.errors import DeviceError
from core.errors import ShapeError
from model.slstm_fast import (
    FastsLSTMCell,
    XlstmVersionError,
    load_neutral_state_dict,
    neutral_state_dict,
    slstm_cells,
    use_fast_slstm,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FULL, MAC = CONFIGS / "model_config_h100_full.yaml", CONFIGS / "model_config_mac_test.yaml"
N_FACTORS, N_FEATURES, LOOKBACK = 5, 9, 20


def small_config(path: Path = MAC, *overrides: str):
    """A shipped config shrunk to CPU test sizes; the layer list and dropouts stay as shipped."""
    base = [
        "training.device=cpu", "training.precision=float32", "training.compile=false",
        "resources.gpus_per_worker=0", f"data.lookback_days={LOOKBACK}", f"data.num_factors={N_FACTORS}",
        "portfolio.max_weight=0.5", "portfolio.solver=torch", "model.encoder.hidden_dim=32",
        "model.heads.cov_rank=2", "model.encoder.patch_days=5", "model.encoder.activation_checkpointing=false",
    ]
    return load_config(path, base + list(overrides))


def randomise_slstm(module: torch.nn.Module, seed: int) -> None:
    """Random recurrent kernels and biases: upstream initialises R to zero, which would make a
    comparison of recurrences (or of their layouts) vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for cell in slstm_cells(module).values():
            head_dim = cell.config.head_dim
            cell._recurrent_kernel_.copy_(torch.randn(cell._recurrent_kernel_.shape, generator=gen) / head_dim**0.5)
            cell._bias_.copy_(torch.randn(cell._bias_.shape, generator=gen))


def windows(batch: int = 3, length: int = LOOKBACK, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, length, N_FACTORS, N_FEATURES, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("path", [FULL, MAC], ids=["h100_layers", "mac_layers"])
def test_encoder_shapes_and_per_layer_dropout(path):
    cfg = small_config(path)
    enc_cfg = cfg.model.encoder
    torch.manual_seed(0)
    encoder = XLSTMEncoder(ModelSpec.of(cfg), "cpu")
    assert encoder(windows()).shape == (3, N_FACTORS, 32)  # factorwise: one summary per factor
    assert encoder(windows(length=10)).shape == (3, N_FACTORS, 32)  # shorter than the lookback works
    with pytest.raises(ShapeError, match="window length 7 must be a multiple of model.encoder.patch_days = 5"):
        encoder(windows(length=7))
    blocks = list(encoder.stack.blocks)
    assert [("sLSTM" if isinstance(b, sLSTMBlock) else "mLSTM") for b in blocks] == list(enc_cfg.cell_types)
    assert all(isinstance(b, (sLSTMBlock, mLSTMBlock)) for b in blocks)
    for i, (block, p) in enumerate(zip(blocks, enc_cfg.dropout)):
        ps = [m.p for m in block.modules() if isinstance(m, torch.nn.Dropout)]
        assert ps == [p] * (2 if isinstance(block, sLSTMBlock) else 1), f"block {i}: {ps} vs {p}"
    assert len(set(enc_cfg.dropout)) > 1 or path == MAC  # the full config really has distinct values


def test_panel_layout_gives_one_summary_per_window():
    encoder = XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.layout=panel")), "cpu")
    assert encoder(windows()).shape == (3, 32)
    assert encoder(windows(length=7)).shape == (3, 32)
    assert encoder.input_proj.in_features == N_FACTORS * N_FEATURES


def test_factorwise_encoder_shares_weights_across_factors():
    """Permuting the factors of the input permutes the summaries the same way (one shared rule),
    and each factor's summary depends on the other factors only through the market mean."""
    torch.manual_seed(0)
    encoder = XLSTMEncoder(ModelSpec.of(small_config(MAC)), "cpu").eval()
    assert encoder.input_proj.in_features == 5 * N_FEATURES  # a patch of one factor, not the panel
    x = windows(batch=2, seed=1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, out_perm = encoder(x), encoder(x[:, :, perm])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=0, atol=1e-5)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3  # factors do get different summaries


def test_without_the_market_context_each_factor_reads_only_its_own_series():
    """model.encoder.market_context: false: a factor's summary is LayerNorm(its own stack output);
    changing another factor's inputs leaves it unchanged, and the stack is the default's (same seed)."""
    torch.manual_seed(0)
    with_market = XLSTMEncoder(ModelSpec.of(small_config(MAC)), "cpu").eval()
    torch.manual_seed(0)
    own = XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.market_context=false")), "cpu").eval()
    assert own.market_mix is None and not any(n.startswith("market_mix") for n, _ in own.named_parameters())
    shared = with_market.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in own.state_dict().items())  # same draws for the rest
    x = windows(batch=2, seed=1)
    x_other = x.clone()
    x_other[:, :, 1:] += 1.0  # every factor but the first
    with torch.no_grad():
        out, out_other, ref = own(x), own(x_other), with_market(x_other)
        stack_out = own.stack(own.input_proj(x[:, :, 0].reshape(2, -1, 5 * N_FEATURES)))[:, -1]  # factor 0 alone
    torch.testing.assert_close(out_other[:, 0], out[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 0], own.mix_norm(stack_out), rtol=0, atol=1e-5)
    assert (ref[:, 0] - with_market(x)[:, 0]).abs().max() > 1e-3  # with the market, factor 0 does see them


def test_factor_attention_mixes_every_factor_and_keeps_the_order_equivariance():
    """model.encoder.factor_mixing: attention: the mean context is replaced by self-attention over
    the factors; the summaries still permute with the factors, a factor's summary is
    LayerNorm(own + attention(all)) against torch's attention written out in float64, and every
    other weight has the default's draw (same seed)."""
    torch.manual_seed(0)
    mean = XLSTMEncoder(ModelSpec.of(small_config(MAC)), "cpu").eval()
    torch.manual_seed(0)
    attn = XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.factor_mixing=attention")), "cpu").eval()
    assert attn.market_mix is None and attn.factor_attention is not None
    shared = mean.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in attn.state_dict().items() if not k.startswith("factor_attention"))
    x = windows(batch=2, seed=1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out, out_perm = attn(x), attn(x[:, :, perm])
        z = attn.stack(attn.input_proj(x.permute(0, 2, 1, 3).reshape(2 * N_FACTORS, -1, 5 * N_FEATURES)))[:, -1]
    torch.testing.assert_close(out_perm, out[:, perm], rtol=0, atol=1e-5)
    # the reference: scaled dot-product attention over the factors, by hand in float64
    mha = attn.factor_attention
    z = z.view(2, N_FACTORS, -1).double()
    h, heads = z.shape[-1], mha.num_heads
    q, k, v = (z @ w.double().T + b.double() for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)))
    split = lambda t: t.view(2, N_FACTORS, heads, h // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / (h // heads) ** 0.5
    ctx = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(2, N_FACTORS, h)
    mixed = ctx @ mha.out_proj.weight.double().T + mha.out_proj.bias.double()
    ref = torch.nn.functional.layer_norm(z + mixed, (h,), attn.mix_norm.weight.double(), attn.mix_norm.bias.double())
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    x_other = x.clone()
    x_other[:, :, 1:] += 1.0  # every factor but the first: factor 0's summary sees them
    with torch.no_grad():
        assert (attn(x_other)[:, 0] - out[:, 0]).abs().max() > 1e-3


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    results = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        encoder = XLSTMEncoder(ModelSpec.of(small_config(MAC, f"model.encoder.activation_checkpointing={flag}")), "cpu").train()
        torch.manual_seed(1)  # same dropout masks: checkpointing replays the RNG state
        out = encoder(windows(batch=2, seed=2))
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters()}))
    (out_a, g_a), (out_b, g_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-6)
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_dropout_is_active_in_train_mode_only():
    cfg = small_config(MAC, "model.encoder.dropout=[0.5,0.5]")
    torch.manual_seed(0)
    encoder = XLSTMEncoder(ModelSpec.of(cfg), "cpu")
    x = windows()
    encoder.train()
    assert not torch.allclose(encoder(x), encoder(x))
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))


def test_encoder_rejects_bad_windows():
    encoder = XLSTMEncoder(ModelSpec.of(small_config()), "cpu")
    with pytest.raises(ShapeError, match=r"expected shape \(B, \*, 5, 9\), got \(3, 20, 4, 9\)"):
        encoder(torch.zeros(3, LOOKBACK, 4, N_FEATURES))
    with pytest.raises(ShapeError, match="window length 21"):
        encoder(torch.zeros(3, LOOKBACK + 1, N_FACTORS, N_FEATURES))


def test_backend_is_chosen_from_the_device_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="model.encoder"):
        auto = XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.slstm_backend=auto")), "cpu")
    assert "sLSTM backend fast (requested auto, device cpu)" in caplog.text
    assert auto.slstm_backend == "fast"
    assert all(type(c) is FastsLSTMCell for c in slstm_cells(auto).values())
    vanilla = XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.slstm_backend=vanilla")), "cpu")
    assert all(type(c) is sLSTMCell_vanilla for c in slstm_cells(vanilla).values())
    with pytest.raises(DeviceError, match="slstm_backend = 'cuda' needs a cuda device"):
        XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.slstm_backend=cuda")), "cpu")


def test_fast_slstm_matches_upstream_vanilla_outputs_and_grads():
    cfg = small_config(MAC, "model.encoder.slstm_backend=vanilla", "model.encoder.hidden_dim=64")
    torch.manual_seed(1)
    upstream = XLSTMEncoder(ModelSpec.of(cfg), "cpu").eval()
    randomise_slstm(upstream, seed=2)
    fast = copy.deepcopy(upstream)
    assert use_fast_slstm(fast) == 1 and type(fast.stack.blocks[0].xlstm.slstm_cell) is FastsLSTMCell
    x = windows(batch=4, seed=3)
    results = []
    for model in (upstream, fast):
        xi = x.clone().requires_grad_(True)
        out = model(xi)  # (B, N, H)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out.detach(), xi.grad, grads))
    (out_u, gx_u, g_u), (out_f, gx_f, g_f) = results
    torch.testing.assert_close(out_f, out_u, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_u, rtol=0, atol=1e-5)
    assert g_u.keys() == g_f.keys()
    for name in g_u:
        torch.testing.assert_close(g_f[name], g_u[name], rtol=0, atol=1e-5, msg=name)
    assert g_u["stack.blocks.0.xlstm.slstm_cell._recurrent_kernel_"].abs().max() > 1e-3  # R is exercised
    # The recurrence matters for the output, so agreement above is not vacuous.
    with torch.no_grad():
        fast.stack.blocks[0].xlstm.slstm_cell._recurrent_kernel_.zero_()
    assert (fast(x) - out_u).abs().max() > 1e-2


def test_fast_slstm_refuses_another_xlstm_version(monkeypatch):
    encoder = XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.slstm_backend=vanilla")), "cpu")
    monkeypatch.setattr(xlstm, "__version__", "2.0.7")
    with pytest.raises(XlstmVersionError, match=r"checked against xlstm==2\.0\.6 but xlstm 2\.0\.7"):
        use_fast_slstm(encoder)


def cuda_layout_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every sLSTM cell replaced by upstream's cuda cell (its own layout transforms),
    built without the kernel (``skip_backend_init``), which is all a CPU allows."""
    out = copy.deepcopy(model)
    for name, cell in slstm_cells(out).items():
        config = copy.deepcopy(cell.config)
        config.backend, config.internal_input_shape = "cuda", "SBNGH"  # the vanilla cell rewrote it
        parent = out.get_submodule(name.rsplit(".", 1)[0])
        parent.slstm_cell = sLSTMCell_cuda(config, skip_backend_init=True)
    return out


def kernel_preactivations(r_cuda: torch.Tensor, b_cuda: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ry + b as the CUDA kernel forms it, written from its source: per head n one column-major
    GEMM with R[n] of shape [DH_in, G*DH_out] (slstm_forward.cu: gemmsb over heads, ld = G*DH), and
    gates in the head-major "SBNGH" layout, bias [NH, G, DH].  Returns (B, G, NH, DH)."""
    num_heads, head_dim, _ = r_cuda.shape
    yh = y.view(y.shape[0], num_heads, head_dim)  # (B, NH, DH)
    ry = torch.einsum("bni,nio->bno", yh, r_cuda).view(y.shape[0], num_heads, 4, head_dim)  # (B, NH, G, DH)
    return (ry + b_cuda.view(num_heads, 4, head_dim)).permute(0, 2, 1, 3)  # (B, G, NH, DH)


def vanilla_preactivations(r_van: torch.Tensor, b_van: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ry + b exactly as upstream's vanilla ``slstm_forward`` forms it.  Returns (B, G, NH, DH)."""
    num_heads, _, head_dim = r_van.shape
    ry = (
        y.reshape(y.shape[0], num_heads, 1, -1)
        .matmul(r_van.transpose(1, 2).reshape(1, num_heads, head_dim, 4 * head_dim))
        .reshape(y.shape[0], num_heads, 4, -1)
        .transpose(1, 2)
    )  # (B, G, NH, DH)
    return ry + b_van.view(4, num_heads, head_dim)


def test_neutral_weights_round_trip_through_the_cuda_layout():
    cfg = small_config(MAC, "model.encoder.hidden_dim=64")
    torch.manual_seed(4)
    source = XLSTMEncoder(ModelSpec.of(cfg), "cpu").eval()
    randomise_slstm(source, seed=5)
    neutral = neutral_state_dict(source)
    prefix = "stack.blocks.0.xlstm.slstm_cell."
    assert not any(k.endswith(("_recurrent_kernel_", "_bias_")) for k in neutral)
    assert neutral[prefix + "recurrent_kernel"].shape == (4, 16, 4, 16)  # (NH, DH_in, G, DH_out)
    assert neutral[prefix + "bias"].shape == (4, 4, 16)  # (NH, G, DH)

    cuda_model = cuda_layout_copy(XLSTMEncoder(ModelSpec.of(cfg), "cpu"))
    load_neutral_state_dict(cuda_model, neutral)
    cell = cuda_model.stack.blocks[0].xlstm.slstm_cell
    assert type(cell) is sLSTMCell_cuda and cell._recurrent_kernel_.shape == (4, 16, 64)
    van = source.stack.blocks[0].xlstm.slstm_cell
    assert van._recurrent_kernel_.shape == (4, 64, 16)
    # The cuda-layout tensors compute the same recurrent pre-activations as the vanilla ones.
    y = torch.randn(3, 64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(
        kernel_preactivations(cell._recurrent_kernel_, cell._bias_, y),
        vanilla_preactivations(van._recurrent_kernel_, van._bias_, y),
        rtol=0, atol=1e-6,
    )
    # A raw copy is silently wrong: the bias has the same shape in both layouts but other values.
    assert cell._bias_.shape == van._bias_.shape and not torch.equal(cell._bias_, van._bias_)

    # cuda layout -> neutral -> a vanilla model (and a fast one): the source's outputs again.
    back = neutral_state_dict(cuda_model)
    assert back.keys() == neutral.keys()
    assert all(torch.equal(back[k], neutral[k]) for k in neutral)
    x = windows(seed=7)
    for backend in ("vanilla", "fast"):
        target = XLSTMEncoder(ModelSpec.of(small_config(MAC, "model.encoder.hidden_dim=64", f"model.encoder.slstm_backend={backend}")), "cpu")
        load_neutral_state_dict(target, back)
        torch.testing.assert_close(target.eval()(x), source(x), rtol=0, atol=1e-6)

"""The compiled region (encoder + heads) is one graph at every shipped shape; recompiles are
bounded, logged, and an error at the limit (model/compiled.py).  That the compiled step trains
like the eager one: tests/ray_jobs/test_precision.py.

Graph breaks and recompiles are dynamo's, whatever the backend, so these tests trace with
backend "eager" (no inductor C++ build: minutes cold on 2 cores); inductor itself runs in the GPU
check's ``pytest -m gpu`` (tests/model/test_compile.py::test_inductor_bf16_matches_eager_on_cuda).
"""

import logging
from pathlib import Path

import pytest
import torch
import torch._dynamo

from core.config import load_config
from core.errors import CompileError
from model.network import XLSTMPortfolio
from model.slstm_fast import _slstm_pointwise

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FEW_FACTORS = ["data.num_factors=4", "portfolio.max_weight=0.5"]
CPU = ["training.device=cpu", "training.precision=float32", "training.compile=false", "resources.gpus_per_worker=0"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test traces from an empty dynamo cache (no guards or graphs of another test's models)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def shipped_model(name: str, *overrides: str) -> XLSTMPortfolio:
    """A shipped config's model as built on CPU: its lookback, patches, layers, hidden size and cell types."""
    cfg = load_config(CONFIGS / f"model_config_{name}.yaml", [*CPU, *overrides])
    assert cfg.model.encoder.slstm_backend in ("auto", "fast")  # the fast sLSTM off cuda
    torch.manual_seed(0)
    return XLSTMPortfolio.from_config(cfg, "cpu")


def windows(model: XLSTMPortfolio, batch: int, seed: int = 0) -> torch.Tensor:
    enc = model.encoder
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, enc.lookback, enc.n_factors, enc.n_features, generator=gen)  # (B, L, N, F)


@pytest.mark.parametrize("name", ["cpu_smoke", "mac_test", "h100_full"])
def test_encoder_and_heads_compile_to_one_graph(name):
    """fullgraph=True: a break would raise.  Train mode with grad, the training path (h100_full:
    with activation checkpointing, a higher-order op in the graph)."""
    model = shipped_model(name, *FEW_FACTORS).train()  # the graph does not depend on the number of factors
    assert any(type(c).__name__ == "FastsLSTMCell" for c in model.encoder.modules())
    assert model.encoder.activation_checkpointing == (name == "h100_full")
    model.compile_moments(backend="eager")
    mu, cov_factor, cov_diag = model.predict_moments(windows(model, batch=2))
    assert mu.requires_grad and model.compiled_moments.graphs == 1


def test_explain_counts_no_graph_break_at_the_smoke_shape():
    """The same pin with dynamo's own count (it found 15 graphs / 14 breaks before the sLSTM step's
    first-step test became a tensor ``where``)."""
    model = shipped_model("cpu_smoke").train()
    explanation = torch._dynamo.explain(model.predict_moments)(windows(model, batch=2))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


@pytest.mark.parametrize("first_step", [True, False])
def test_branchless_first_step_matches_upstreams_branch(first_step):
    """The 0-d ``where`` gives upstream's values and gradients exactly, on either side of its branch."""
    from xlstm.blocks.slstm.src.vanilla.slstm import slstm_forward_pointwise

    gen = torch.Generator().manual_seed(4)
    batch, hidden = 3, 8
    raw = torch.randn(4, batch, hidden, generator=gen, dtype=torch.float64, requires_grad=True)  # (G, B, H)
    states = torch.randn(4, batch, hidden, generator=gen, dtype=torch.float64)
    states[2] = 0.0 if first_step else states[2].abs() + 0.1  # n: zero only before the first step
    ours = torch.stack(_slstm_pointwise(raw, tuple(states)))  # (4, B, H)
    upstream, _ = slstm_forward_pointwise(raw.transpose(0, 1).reshape(batch, -1), 0.0, 0.0, states, {})
    torch.testing.assert_close(ours, upstream, rtol=0, atol=0)
    weights = torch.randn(ours.shape, generator=gen, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), raw)
    (g_upstream,) = torch.autograd.grad((upstream * weights).sum(), raw)
    # Values are bit-equal; the gradient of iraw sums its two paths in another order (1 ulp).
    torch.testing.assert_close(g_ours, g_upstream, rtol=0, atol=1e-15)


def test_recompile_limit_is_an_error_not_eager(caplog):
    """Dynamo's default at its limit is to run eagerly from then on; here the next graph raises."""
    model = shipped_model("cpu_smoke").train()
    model.compile_moments(recompile_limit=1, backend="eager")
    x = windows(model, batch=2)
    with caplog.at_level(logging.INFO, logger="model.compiled"):
        model.predict_moments(x)
    assert "graph 1 of at most 1 for input (2, 20, 104, 9)" in caplog.text
    assert "train mode, grad on, autocast off" in caplog.text
    model.eval()  # a new guard (the mode): a second graph, over the limit
    with pytest.raises(CompileError, match=r"hit its recompile limit \(1 graphs\).*eval mode.*TORCH_LOGS=recompiles"):
        model.predict_moments(x)
    with pytest.raises(CompileError, match="recompile limit"):  # and stays an error on later calls
        model.predict_moments(x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inductor_bf16_matches_eager_on_cuda():
    """Inductor's code for the smoke model under bf16 autocast on the GPU, against eager."""
    cfg = load_config(CONFIGS / "model_config_cpu_smoke.yaml", [
        "training.device=cuda", "training.precision=bfloat16", "resources.gpus_per_worker=1",
        "model.encoder.slstm_backend=fast"])
    torch.manual_seed(0)
    model = XLSTMPortfolio.from_config(cfg, "cuda").eval()
    x = windows(model, batch=4).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model.predict_moments(x)
        model.compile_moments()
        out = model.predict_moments(x)
    for got, want in zip(out, ref):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))

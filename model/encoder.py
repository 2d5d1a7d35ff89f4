"""xLSTM encoder: a window of the factor panel -> summary vectors per decision.

Two layouts (``model.encoder.layout``):

* ``factorwise`` (default): one stack, shared by all factors, reads each factor's own series.
  (B, L, N, F) --per factor, patches of P = patch_days days--> (B*N, L/P, P*F) --Linear-->
  (B*N, L/P, H) --xLSTMBlockStack--> last token (B*N, H) --> (B, N, H), plus a market context
  ``Linear(mean over factors)`` added to every factor and a LayerNorm.  The same per-factor rule is
  learnt once from all 104 factors' data, and what is shared (the market) is mixed back in.
* ``panel``: (B, L, N, F) --flatten per day--> (B, L, N*F) --Linear--> (B, L, H) --stack--> last
  day (B, H).  One Linear of all N*F inputs must learn each factor's rule separately through one
  bottleneck; it memorised the training span (docs/quality.md).

The stack ends in upstream's post-blocks LayerNorm and every block is causal, so the last token's
hidden state summarises the whole window; it is the summary (no pooling).
``model.encoder.activation_checkpointing`` recomputes each block in the backward pass instead of
keeping its activations (the full-size factorwise model needs it to fit five seeds on one GPU).

sLSTM backends (``model.encoder.slstm_backend``), resolved here from the device and logged:

* ``auto``: ``cuda`` on a cuda device, ``fast`` elsewhere;
* ``cuda``: upstream's CUDA kernel (JIT-compiled on first construction); a non-cuda device raises
  :class:`DeviceError` (never a silent fallback);
* ``fast``: :mod:`model.slstm_fast`, pure torch, same weights and outputs as ``vanilla``;
* ``vanilla``: upstream's pure-torch step (the slow reference).

Every backend runs upstream's causal convolution and per-head norm through
:mod:`model.fast_layers` (same parameters and math, without their slow CPU backward kernels).

On cuda the sLSTM kernel computes in ``training.precision`` (float32 or bfloat16; upstream's default
would be bfloat16 always).
"""

from __future__ import annotations

import logging

import torch
import torch.utils.checkpoint
from torch import nn
from xlstm import (
    FeedForwardConfig,
    mLSTMBlockConfig,
    mLSTMLayerConfig,
    sLSTMBlockConfig,
    sLSTMLayerConfig,
    xLSTMBlockStack,
    xLSTMBlockStackConfig,
)

from core.config import EncoderConfig, check_device
from core.errors import ConfigError, DeviceError, ShapeError
from model.heads import check_shape
from model.fast_layers import use_fast_layers
from model.slstm_fast import use_fast_slstm
from model.spec import ModelSpec

LOGGER = logging.getLogger(__name__)

SLSTM_BACKENDS = ("auto", "cuda", "fast", "vanilla")


def resolve_slstm_backend(requested: str, device: str) -> str:
    """The sLSTM backend to build for ``device``: one of ``cuda``, ``fast``, ``vanilla``.

    Raises :class:`DeviceError` for ``cuda`` on a non-cuda device and :class:`ConfigError` for an
    unknown name.
    """
    kind = torch.device(device).type
    if requested == "auto":
        return "cuda" if kind == "cuda" else "fast"
    if requested == "cuda" and kind != "cuda":
        raise DeviceError(
            f"model.encoder.slstm_backend = 'cuda' needs a cuda device, but the model is built for "
            f"{device!r}. Use slstm_backend=auto (the fast pure-torch sLSTM off cuda) or a GPU."
        )
    if requested in ("cuda", "fast", "vanilla"):
        return requested
    raise ConfigError(f"model.encoder.slstm_backend = {requested!r} is unknown; use one of {SLSTM_BACKENDS}.")


def build_stack_config(enc: EncoderConfig, context: int, backend: str, dtype: str) -> xLSTMBlockStackConfig:
    """A fresh upstream stack config (upstream's ``__post_init__`` mutates nested configs in place,
    so sharing one between models would couple them).

    ``backend`` is upstream's ("cuda" or "vanilla"); ``dtype`` is the cuda kernel's compute dtype.
    Dropout is 0 here and set per layer on the built modules (:func:`apply_layer_dropout`).
    """
    slstm_at = [i for i, cell in enumerate(enc.cell_types) if cell == "sLSTM"]
    mlstm_block = None
    if len(slstm_at) < enc.num_layers:
        mlstm_block = mLSTMBlockConfig(
            mlstm=mLSTMLayerConfig(
                conv1d_kernel_size=enc.conv1d_kernel_size, qkv_proj_blocksize=4, num_heads=enc.num_heads
            )
        )
    slstm_block = None
    if slstm_at:
        slstm_block = sLSTMBlockConfig(
            slstm=sLSTMLayerConfig(
                backend=backend,
                num_heads=enc.num_heads,
                conv1d_kernel_size=enc.conv1d_kernel_size,
                bias_init="powerlaw_blockdependent",
                dtype=dtype,
            ),
            feedforward=FeedForwardConfig(proj_factor=1.3, act_fn="gelu"),
        )
    return xLSTMBlockStackConfig(
        mlstm_block=mlstm_block,
        slstm_block=slstm_block,
        context_length=context,  # must be >= the sequence length (it sizes mLSTM's causal mask)
        num_blocks=enc.num_layers,
        embedding_dim=enc.hidden_dim,
        slstm_at=slstm_at,
        dropout=0.0,
    )


def apply_layer_dropout(stack: xLSTMBlockStack, dropout: tuple[float, ...]) -> None:
    """Set ``p`` of every nn.Dropout inside block i to ``dropout[i]`` (upstream has one global p).

    An sLSTM block has two (after the cell and after its feed-forward), an mLSTM block one.
    """
    if len(dropout) != len(stack.blocks):
        raise ConfigError(f"model.encoder.dropout has {len(dropout)} entries for {len(stack.blocks)} blocks.")
    for i, (block, p) in enumerate(zip(stack.blocks, dropout)):
        modules = [m for m in block.modules() if isinstance(m, nn.Dropout)]
        if not modules:
            raise ConfigError(f"block {i} ({type(block).__name__}) has no dropout module to set p = {p} on.")
        for module in modules:
            module.p = float(p)


class XLSTMEncoder(nn.Module):
    """Encode a window of the factor panel into a summary vector.

    Parameters
    ----------
    spec : ModelSpec
        Uses ``encoder``, ``lookback_days``, ``num_factors``, ``num_features`` and ``precision``.
    device : str
        Device the model will run on ("cpu", "cuda", "cuda:1", "mps"); picks the sLSTM backend.
        The encoder is built on the CPU; the caller moves it (``XLSTMPortfolio`` does).
    """

    def __init__(self, spec: ModelSpec, device: str):
        super().__init__()
        enc = spec.encoder
        check_device(torch.device(device).type)
        if enc.conv1d_kernel_size < 2:
            raise ConfigError(f"model.encoder.conv1d_kernel_size = {enc.conv1d_kernel_size} must be >= 2 (upstream's "
                              "causal conv returns an empty sequence for a width of 1).")
        self.lookback, self.n_factors, self.n_features = spec.lookback_days, spec.num_factors, spec.num_features
        self.hidden_dim = enc.hidden_dim
        self.slstm_backend = resolve_slstm_backend(enc.slstm_backend, device)
        LOGGER.info(
            "sLSTM backend %s (requested %s, device %s)", self.slstm_backend, enc.slstm_backend, device
        )
        upstream_backend = "cuda" if self.slstm_backend == "cuda" else "vanilla"
        dtype = spec.precision

        self.layout, self.patch_days = enc.layout, enc.patch_days
        self.activation_checkpointing = enc.activation_checkpointing
        if self.layout == "factorwise":
            # One token = one factor's features over patch_days days; the stack is shared by factors.
            self.input_proj = nn.Linear(self.patch_days * self.n_features, enc.hidden_dim)
            context = self.lookback // self.patch_days
            self.market_mix: nn.Linear | None = nn.Linear(enc.hidden_dim, enc.hidden_dim)
            if not enc.market_context:  # built, then dropped: the stack's init draws the same numbers
                self.market_mix = None
            self.mix_norm = nn.LayerNorm(enc.hidden_dim)
        else:
            self.input_proj = nn.Linear(self.n_factors * self.n_features, enc.hidden_dim)
            context = self.lookback
        self.stack = xLSTMBlockStack(build_stack_config(enc, context, upstream_backend, dtype))
        apply_layer_dropout(self.stack, enc.dropout)
        if self.slstm_backend == "fast":
            use_fast_slstm(self.stack)
        use_fast_layers(self.stack)  # causal conv and per-head norm without their slow CPU kernels
        self.factor_attention: nn.MultiheadAttention | None = None
        if self.layout == "factorwise" and self.market_mix is not None and enc.factor_mixing == "attention":
            # Drawn from a forked RNG: every other weight gets the same numbers as with the mean.
            with torch.random.fork_rng(devices=[]):
                self.factor_attention = nn.MultiheadAttention(enc.hidden_dim, enc.num_heads, batch_first=True)
            self.market_mix = None  # replaced, not stacked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Summarise a batch of windows.

        Parameters
        ----------
        x : Tensor, shape (B, L, N, F)
            Features of N factors over L <= lookback days, oldest first; cast to float32.

        Returns
        -------
        Tensor, shape (B, N, H) for layout factorwise (one summary per factor), (B, H) for panel
            The stack's output at the last token of the window.
        """
        check_shape("x", x, (None, None, self.n_factors, self.n_features), hint="(batch, lookback, factors, features)")
        batch, length = x.shape[0], x.shape[1]
        if not 1 <= length <= self.lookback:
            raise ShapeError(
                f"x: window length {length} must be in [1, lookback_days = {self.lookback}] "
                "(the mLSTM causal mask is sized to the lookback)."
            )
        if not x.dtype.is_floating_point:
            raise ShapeError(f"x: expected a floating-point tensor, got {x.dtype}.")
        x = x.to(self.input_proj.weight.dtype)
        if self.layout == "factorwise":
            return self._factorwise(x)
        z = self.input_proj(x.reshape(batch, length, self.n_factors * self.n_features))  # (B, L, H)
        z = self._stack(z)  # (B, L, H)
        return z[:, -1]  # (B, H)

    def _stack(self, z: torch.Tensor) -> torch.Tensor:
        """upstream's ``xLSTMBlockStack.forward``, optionally recomputing each block in backward."""
        if not (self.activation_checkpointing and self.training and torch.is_grad_enabled()):
            return self.stack(z)
        for block in self.stack.blocks:
            z = torch.utils.checkpoint.checkpoint(block, z, use_reentrant=False)  # RNG (dropout) replayed
        return self.stack.post_blocks_norm(z)

    def _factorwise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, N, F) -> (B, N, H): each factor's series through the shared stack, then the market."""
        batch, length = x.shape[0], x.shape[1]
        if length % self.patch_days:
            raise ShapeError(
                f"x: window length {length} must be a multiple of model.encoder.patch_days = {self.patch_days}."
            )
        tokens = length // self.patch_days
        z = x.permute(0, 2, 1, 3)  # (B, N, L, F)
        z = z.reshape(batch * self.n_factors, tokens, self.patch_days * self.n_features)  # (B*N, T, P*F)
        z = self._stack(self.input_proj(z))[:, -1]  # (B*N, H)
        z = z.view(batch, self.n_factors, self.hidden_dim)  # (B, N, H)
        if self.factor_attention is not None:  # model.encoder.factor_mixing: attention
            mixed, _ = self.factor_attention(z, z, z, need_weights=False)  # (B, N, H): each factor reads all
            return self.mix_norm(z + mixed)
        if self.market_mix is None:  # model.encoder.market_context: false
            return self.mix_norm(z)
        market = self.market_mix(z.mean(dim=1, keepdim=True))  # (B, 1, H): what all factors share
        return self.mix_norm(z + market)  # (B, N, H)

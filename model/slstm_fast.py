"""A fast pure-torch sLSTM recurrence for CPU/MPS, and backend-neutral sLSTM weights.

Upstream's vanilla sLSTM (xlstm 2.0.6, ``xlstm/blocks/slstm/src/vanilla/__init__.py``) computes the
recurrent term of every step as ``(B, NH, 1, DH) @ (1, NH, DH, 4*DH)``: the broadcast matmul
materialises the transposed recurrent matrix once per batch element per time step, forward and
backward.  :func:`fast_slstm_forward` transposes it once per sequence and runs one head-batched
``bmm`` per step; everything else (the pointwise gate function, state layout, dtypes) is upstream's
own code, so outputs agree to float32 round-off (tests/model/test_encoder.py pins 1e-5).

The fast step is installed per module (:func:`use_fast_slstm` swaps the class of that module's
vanilla cells), never by patching upstream globally.  It relies on upstream's private internals
(``_impl``, the internal ``_recurrent_kernel_`` layout), so it refuses any xlstm version other than
the one it was checked against (:data:`CHECKED_XLSTM_VERSION`).

Weights: the cuda and vanilla cells store ``_recurrent_kernel_`` and ``_bias_`` in different layouts
(same bias shape!), so a raw ``state_dict`` copy across backends is silently wrong.
:func:`neutral_state_dict` stores upstream's backend-independent "external" layout instead
(``recurrent_kernel`` (NH, DH_in, G, DH_out), ``bias`` (NH, G, DH)), and
:func:`load_neutral_state_dict` maps it into whatever backend the target model runs, through each
cell's own ``_*_ext2int`` transform.
"""

from __future__ import annotations

import torch
import xlstm
from torch import nn
from torch.nn import functional as F
from xlstm.blocks.slstm.cell import sLSTMCell_vanilla, sLSTMCellBase

from core.errors import CheckpointError, XlstmVersionError

CHECKED_XLSTM_VERSION = "2.0.6"
"""The xlstm release whose vanilla sLSTM internals the fast step was checked against."""

# Internal parameter names of an upstream sLSTM cell and their neutral (external-layout) names.
# The neutral names differ on purpose: loading a neutral dict raw with strict=True fails loudly.
_INTERNAL_TO_NEUTRAL = {"_recurrent_kernel_": "recurrent_kernel", "_bias_": "bias"}


def check_xlstm_version() -> None:
    """Raise :class:`XlstmVersionError` unless the loaded xlstm is :data:`CHECKED_XLSTM_VERSION`."""
    found = getattr(xlstm, "__version__", "unknown")
    if found != CHECKED_XLSTM_VERSION:
        raise XlstmVersionError(
            f"the fast sLSTM step was checked against xlstm=={CHECKED_XLSTM_VERSION} but xlstm "
            f"{found} is installed. Install xlstm=={CHECKED_XLSTM_VERSION}, or set "
            "model.encoder.slstm_backend=vanilla until model/slstm_fast.py is re-checked "
            "(tests/model/test_encoder.py compares it with upstream)."
        )


def _slstm_pointwise(
    raw: torch.Tensor, y_c_n_m: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upstream's sLSTM gate step (``src/vanilla/slstm.py``) without stacking states and gates.

    Same ops in the same order, including ``torch.minimum(., 1)`` and ``torch.max``, whose ties split
    the gradient (upstream's gradients depend on that).  raw: (G, B, H), gate-leading so that each
    gate is a contiguous (B, H) block; states: 4 x (B, H).
    """
    _, c, n, m = y_c_n_m
    iraw, fraw, zraw, oraw = raw.unbind(dim=0)  # 4 x (B, H)
    logfplusm = m + F.logsigmoid(fraw)
    # Upstream's test for "first step" (a zero normaliser): there the stabiliser starts at iraw.
    # Upstream branches in Python (``iraw if torch.all(n == 0.0) else ...``); a 0-d ``where`` picks
    # the same values and routes the gradient the same way, without a host sync per step or a
    # torch.compile graph break (tests/model/test_compile.py pins zero breaks).
    first_step = torch.all(n == 0.0)  # 0-d bool, on the device
    mnew = torch.where(first_step, iraw, torch.max(iraw, logfplusm))
    ogate = torch.sigmoid(oraw)
    igate = torch.minimum(torch.exp(iraw - mnew), torch.ones_like(iraw))
    fgate = torch.minimum(torch.exp(logfplusm - mnew), torch.ones_like(iraw))
    cnew = fgate * c + igate * torch.tanh(zraw)
    nnew = fgate * n + igate
    ynew = ogate * cnew / nnew
    return ynew, cnew, nnew, mnew


def fast_slstm_forward(x: torch.Tensor, states: torch.Tensor, R: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Run the sLSTM recurrence over a sequence; same contract as upstream ``slstm_forward(...)[0]``
    with upstream's "slstm" pointwise function.

    Parameters
    ----------
    x : Tensor, shape (S, B, G*H)
        Input pre-activations per step, gate-major (internal layout "SBGNH"); G = 4 gates,
        H = NH * DH hidden units.
    states : Tensor, shape (4, B, H)
        Initial states (y, c, n, m); only y enters the recurrence.
    R : Tensor, shape (NH, G*DH, DH)
        Recurrent kernel in the vanilla cell's internal layout: R[n, g*DH + j, i] maps input unit i
        of head n to output unit j of gate g.
    b : Tensor, shape (G*H,)
        Bias in the vanilla internal layout (gate-major).

    Returns
    -------
    Tensor, shape (4, S+1, B, H)
        All states, the initial ones first.
    """
    _, batch, _ = x.shape
    num_heads, gates_x_head_dim, head_dim = R.shape
    num_gates = gates_x_head_dim // head_dim
    # Transpose once per sequence (not once per batch element and step, as upstream's broadcast).
    r_in_out = R.transpose(1, 2).contiguous()  # (NH, DH_in, G*DH_out)
    # Gate-leading layouts, once per sequence: every gate of a step is then a contiguous block.
    x_gates = x.reshape(x.shape[0], batch, num_gates, -1).transpose(1, 2).contiguous()  # (S, G, B, H)
    b_gates = b.reshape(num_gates, 1, -1)  # (G, 1, H)
    state_dtype = states.dtype
    current = tuple(states.unbind(dim=0))  # 4 x (B, H): no per-step stack of states or gates
    history = [current]
    for wx_t in x_gates.unbind(dim=0):  # wx_t: (G, B, H)
        y = current[0].reshape(batch, num_heads, head_dim).transpose(0, 1)  # (NH, B, DH)
        ry = torch.bmm(y, r_in_out)  # (NH, B, G*DH)
        ry = ry.reshape(num_heads, batch, num_gates, head_dim).permute(2, 1, 0, 3)  # (G, B, NH, DH)
        raw = wx_t + ry.reshape(num_gates, batch, -1) + b_gates  # (G, B, H); upstream's order of sums
        current = tuple(s.to(dtype=state_dtype) for s in _slstm_pointwise(raw, current))
        history.append(current)
    per_state = [torch.stack(seq, dim=0) for seq in zip(*history)]  # 4 x (S+1, B, H)
    return torch.stack(per_state, dim=0)  # (4, S+1, B, H)


class FastsLSTMCell(sLSTMCell_vanilla):
    """Upstream's vanilla sLSTM cell with :func:`fast_slstm_forward` as its sequence kernel.

    Same parameters, same internal layout and state dict as :class:`sLSTMCell_vanilla`; only
    ``_impl`` differs.  Installed on existing cells by :func:`use_fast_slstm`.
    """

    def _impl(self, training: bool, input: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return fast_slstm_forward(input, state, self._recurrent_kernel, self._bias)


def use_fast_slstm(module: nn.Module) -> int:
    """Switch every upstream vanilla sLSTM cell inside ``module`` to :class:`FastsLSTMCell`.

    Only this module's cells change (their class is swapped in place; the subclass adds no state),
    so other models in the process keep upstream's step.  Returns the number of cells switched.
    Raises :class:`XlstmVersionError` if xlstm is not :data:`CHECKED_XLSTM_VERSION`.
    """
    check_xlstm_version()
    switched = 0
    for name, sub in module.named_modules():
        if type(sub) is sLSTMCell_vanilla:
            if sub.config.function != "slstm" or sub.config.constants:
                raise TypeError(
                    f"{name}: the fast step implements upstream's 'slstm' function without constants, "
                    f"got function={sub.config.function!r}, constants={sub.config.constants!r}."
                )
            sub.__class__ = FastsLSTMCell
            switched += 1
        elif isinstance(sub, sLSTMCellBase) and not isinstance(sub, FastsLSTMCell):
            raise TypeError(
                f"{name}: use_fast_slstm expects vanilla sLSTM cells, got {type(sub).__name__} "
                "(build the encoder with the vanilla backend first)."
            )
    return switched


def slstm_cells(module: nn.Module) -> dict[str, sLSTMCellBase]:
    """Every upstream sLSTM cell in ``module`` by its qualified name (prefix for state-dict keys)."""
    return {name: sub for name, sub in module.named_modules() if isinstance(sub, sLSTMCellBase)}


def neutral_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each sLSTM cell's weights in the backend-neutral layout.

    For a cell at ``<p>``, ``<p>._recurrent_kernel_`` becomes ``<p>.recurrent_kernel`` of shape
    (NH, DH_in, G, DH_out) and ``<p>._bias_`` becomes ``<p>.bias`` of shape (NH, G, DH): upstream's
    external layout, identical for the cuda, vanilla and fast cells.  All other entries are kept.
    The sLSTM entries are fresh contiguous copies; the others are ``state_dict``'s detached
    tensors.  All stay on the model's device.
    """
    raw = model.state_dict()
    out = dict(raw)
    for prefix, cell in slstm_cells(model).items():
        # The accessors apply the cell's own int->ext transform, so this is right for any backend.
        for internal, neutral in _INTERNAL_TO_NEUTRAL.items():
            to_external = getattr(cell, f"{internal}int2ext")  # e.g. _bias_int2ext
            del out[f"{prefix}.{internal}"]
            out[f"{prefix}.{neutral}"] = to_external(getattr(cell, internal)).detach().contiguous().clone()
    return out


def load_neutral_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`neutral_state_dict` into ``model`` in its current backend's layout (strict).

    Raises
    ------
    CheckpointError
        Missing or unexpected keys, or a neutral sLSTM tensor of the wrong shape.
    """
    raw = dict(state)
    for prefix, cell in slstm_cells(model).items():
        for internal, neutral in _INTERNAL_TO_NEUTRAL.items():
            key = f"{prefix}.{neutral}"
            if key not in raw:
                raise CheckpointError(
                    f"neutral state dict lacks {key!r} (the sLSTM weights of {prefix!r}); was it "
                    "written by neutral_state_dict? A raw state_dict has '_recurrent_kernel_' keys."
                )
            ext = raw.pop(key)
            want = tuple(getattr(cell, neutral).shape)  # the proxy's external shape
            if tuple(ext.shape) != want:
                raise CheckpointError(f"{key}: shape {tuple(ext.shape)}, expected {want} for this model.")
            to_internal = getattr(cell, f"{internal}ext2int")  # e.g. _bias_ext2int
            raw[f"{prefix}.{internal}"] = to_internal(ext).contiguous()
    try:
        model.load_state_dict(raw, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"state dict does not fit the model built from its config: {exc}") from None

"""Checkpoints that rebuild their model from the stored config alone.

A checkpoint is one ``torch.save`` file holding a plain dict, loadable with
``torch.load(path, weights_only=True)``:

* ``format_version``: int (:data:`FORMAT_VERSION`);
* ``config``: ``cfg.to_dict()`` of the run (plain nested dict), a record of the whole run; the
  model is rebuilt from its model-only slice (:class:`model.spec.ModelSpec`);
* ``model_state``: :func:`model.slstm_fast.neutral_state_dict` of the model, on the CPU, so the
  sLSTM weights load into any backend (cuda kernel, fast, vanilla);
* anything the caller passes as keyword arguments (optimizer / scheduler state dicts, epoch, seed,
  normalisation stats, data fingerprint, metrics): plain values only (tensors, str, int, float,
  bool, None, and dict / list / tuple of them); numpy values are refused with the key named.

Files are written atomically (:func:`core.files.atomic_path`: a temporary file, fsync, ``os.replace``;
on an object store one whole upload), so a crash mid-write leaves the previous checkpoint intact.  A
path may be local or a :class:`core.storage.RemotePath` (``s3://...``): a remote checkpoint is read
into memory, then loaded with the same ``weights_only=True``.
"""

from __future__ import annotations

import collections
import io
from pathlib import Path
from typing import Any, Union

import torch

from core.config import Config, stored_config
from core.errors import CheckpointError, ConfigError
from core.files import atomic_path, copy_atomic
from core.storage import RemotePath, as_path
from model.network import XLSTMPortfolio
from model.slstm_fast import load_neutral_state_dict, neutral_state_dict
from model.spec import ModelSpec

__all__ = ["FORMAT_VERSION", "save_checkpoint", "copy_checkpoint", "load_checkpoint", "load_model",
           "load_neutral_state_dict"]
AnyPath = Union[str, Path, RemotePath]

FORMAT_VERSION = 1
RESERVED_KEYS = ("format_version", "config", "model_state")
# Exact types: subclasses (numpy.float64 is a float, a namedtuple a tuple) pickle by class
# reference, which weights_only loading refuses.
_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.Size, torch.dtype)


def _check_plain(value: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` cannot read back, naming the key."""
    if type(value) in _PLAIN_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (dict, collections.OrderedDict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where}: key {key!r} ({type(key).__name__}) must be a str or int.")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}, which torch.load(weights_only=True) "
        "refuses. Store plain values: float(x) / int(x) for numpy scalars, torch.as_tensor(a) or "
        "a.tolist() for arrays, a dict for objects."
    )


def save_checkpoint(path: AnyPath, model: XLSTMPortfolio, cfg: Config, **extra: Any) -> Path:
    """Write a checkpoint atomically; returns its path.

    Parameters
    ----------
    path : str or Path
        Target file; its folder is created if missing.
    model : XLSTMPortfolio
        The unwrapped model (not a torch.compile / DDP wrapper, whose keys carry prefixes).
    cfg : Config
        The config the model was built from.
    **extra
        Plain entries stored next to the model, e.g. optimizer=..., epoch=..., metrics=...

    Raises
    ------
    CheckpointError
        A wrapped model, a config that does not describe the model, a reserved key in ``extra``, or
        an entry that weights_only loading would refuse.  Nothing is written then.
    """
    if not isinstance(model, XLSTMPortfolio):
        raise CheckpointError(
            f"save_checkpoint needs the XLSTMPortfolio itself, got {type(model).__name__}; pass the "
            "module you built, not its torch.compile / DDP wrapper."
        )
    if model.spec.architecture() != ModelSpec.of(cfg).architecture():
        raise CheckpointError("cfg does not describe this model (model / data-shape / portfolio sections differ).")
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise CheckpointError(f"extra entries {clash} would overwrite reserved checkpoint keys {RESERVED_KEYS}.")
    state = {k: v.detach().to("cpu") for k, v in neutral_state_dict(model).items()}
    payload = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "model_state": state, **extra}
    _check_plain(payload, "checkpoint")
    path = as_path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(payload, fh)
    except (OSError, RuntimeError) as exc:  # torch.save wraps a failed write in RuntimeError
        raise _write_error(path, exc) from exc
    return path


def copy_checkpoint(source: AnyPath, path: AnyPath):
    """Replace ``path`` with a copy of the checkpoint file ``source``, atomically; either may be remote.

    Raises CheckpointError naming ``path`` when the copy fails (``path`` is then unchanged).
    """
    path = as_path(path)
    try:
        return copy_atomic(source, path)
    except OSError as exc:
        raise _write_error(path, exc) from exc


def _write_error(path, exc: BaseException) -> CheckpointError:
    kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    return CheckpointError(
        f"could not write checkpoint {path}: {_reason(exc)}; {kept}. Free disk space or fix the "
        "folder's permissions, then resume."
    )


def _reason(exc: BaseException) -> str:
    """One line saying why a read or write failed: the OS reason when there is one (torch wraps an
    OSError in a RuntimeError), else the exception's first line."""
    cause = exc
    while cause is not None:
        if isinstance(cause, OSError):
            return f"[Errno {cause.errno}] {cause.strerror or cause}"
        cause = cause.__cause__ or cause.__context__
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_checkpoint(path: AnyPath, map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; returns the stored dict.

    Raises
    ------
    CheckpointError
        The file is missing, unreadable / corrupt / not weights-only, or of an unknown format.
    """
    path = as_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    try:
        source = io.BytesIO(path.read_bytes()) if isinstance(path, RemotePath) else path
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path} is corrupt or not a weights-only checkpoint: {_reason(exc)}") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a checkpoint dict.")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is unknown; this code reads format {FORMAT_VERSION} "
            "(written by model.checkpoint.save_checkpoint)."
        )
    missing = [k for k in RESERVED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}.")
    return payload


def load_model(path: AnyPath, device: str = "cpu") -> tuple[XLSTMPortfolio, dict]:
    """Rebuild the model from a checkpoint's stored config and load its weights.

    The stored config is read as it was written (:func:`core.config.stored_config`); the model is
    built from its model-only spec for ``device`` (:meth:`model.spec.ModelSpec.for_device`: an H100
    checkpoint loads on a CPU with float32 blocks and the pure-torch sLSTM). Nothing of training or
    Ray is rewritten. Returns ``(model in eval mode on device, payload)``; ``payload["config"]`` is
    the stored config.
    """
    payload = load_checkpoint(path, map_location="cpu")
    try:
        cfg = stored_config(payload["config"], f"{path} (stored config)")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the stored config no longer validates: {exc}") from exc
    model = XLSTMPortfolio(ModelSpec.of(cfg).for_device(device), device=device)
    load_neutral_state_dict(model, payload["model_state"])
    return model.eval(), payload

"""Typed errors shared by every package.  Each message says the value, the rule and the fix."""


class PortfolioTrainerError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(PortfolioTrainerError, ValueError):
    """A config file, key or value is wrong (unknown key, wrong type, inconsistent values)."""


class DeviceError(ConfigError, RuntimeError):
    """The configured device (or its precision) is not available.  We never fall back to another device.

    A ConfigError too: the fix is a config value (``training.device`` / ``training.precision``).
    """


class DataError(PortfolioTrainerError, ValueError):
    """The factor panel is malformed: names the column, first bad date or factor."""


class SolverError(PortfolioTrainerError, RuntimeError):
    """The portfolio optimisation failed or returned an infeasible answer."""


class TrainingError(PortfolioTrainerError, RuntimeError):
    """Training cannot go on (NaN/inf loss or gradient, refused output directory, ...)."""


class CompileError(TrainingError):
    """torch.compile failed: a graph break under ``fullgraph=True``, the recompile limit, or the
    compiler itself.  Never answered by running eagerly instead; the fix is the code or
    ``training.compile=false``."""


class CheckpointError(PortfolioTrainerError, RuntimeError):
    """A checkpoint is missing, corrupt or incompatible with the code."""


class ShapeError(PortfolioTrainerError, ValueError):
    """A tensor reaching the model or the losses has the wrong shape, dtype or batch size."""


class XlstmVersionError(PortfolioTrainerError, RuntimeError):
    """The installed xlstm is not the version the fast sLSTM step was checked against."""

"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class MetagradError(Exception):
    """A problem the user can fix (bad config value, missing file, diverged run); the message names the fix."""


class ConfigError(MetagradError, ValueError):
    """A configuration value is invalid."""


class TrainingDiverged(MetagradError, RuntimeError):
    """The meta-loss became NaN or infinite."""


class CheckpointError(MetagradError, RuntimeError):
    """A checkpoint is missing, incomplete or inconsistent."""


class Interrupted(MetagradError):
    """The user stopped a run (Ctrl-C); a checkpoint was saved. The CLI exits with code 130."""


class DataError(MetagradError, RuntimeError):
    """A dataset could not be fetched or failed verification (no network, HTTP error, checksum mismatch)."""

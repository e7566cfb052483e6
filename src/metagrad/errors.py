"""User-facing errors: the CLI prints their message as one line and exits with code 2."""

import difflib
import math
import numbers
import os
import signal
from typing import Any


class MetagradError(Exception):
    """A problem the user can fix (bad config value, missing file, diverged run); the message names the fix."""


class ConfigError(MetagradError, ValueError):
    """A configuration value is invalid."""


class TrainingDiverged(MetagradError, RuntimeError):
    """The meta-loss became NaN or infinite."""


class NonFiniteMetaLoss(UserWarning):
    """``meta_gradient`` met a NaN or infinite meta-loss: its ``.grad`` fields would carry it into the parameters
    (the Trainer stops on this itself, with its own message)."""


class CheckpointError(MetagradError, RuntimeError):
    """A checkpoint is missing, incomplete or inconsistent."""


class Damaged(CheckpointError):
    """A file metagrad wrote (a checkpoint, a results file) was damaged from outside: its message names the file,
    what is wrong with it and what to do instead."""

    def __init__(self, what: str, fault: str, fix: str):
        self.what, self.fault, self.fix = what, fault, fix
        super().__init__(f"{self.problem}; {fix}")

    @property
    def problem(self) -> str:
        """The message without its fix: which file, and what is wrong with it."""
        return f"{self.what} is damaged ({self.fault})"

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # (a pool worker's error reaches its parent whole)
        return Damaged, (self.what, self.fault, self.fix)

    def instead(self, fix: str) -> "Damaged":
        """The same fault with another fix (the caller knows better how to make the file again)."""
        return Damaged(self.what, self.fault, fix)


class Interrupted(MetagradError):
    """The user stopped a run (Ctrl-C, SIGTERM). The CLI exits with code 128 + the signal's number (Ctrl-C: 130)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum

    def then(self, hint: str) -> "Interrupted":
        """The same stop, its message followed by what to run next."""
        return Interrupted(f"{self}; {hint}", self.signum)


class EnvironmentFault(TrainingDiverged):
    """A meta-RL environment returned non-finite rewards or observations: the run stops as a diverged one (its
    session recorded, the last finite checkpoint kept), its message naming the environment, not the step sizes."""


class WorkerLost(MetagradError, RuntimeError):
    """A helper process (a simulator worker, a study's pool worker) ended mid-run (killed, out of memory): the run
    stops without saving the iteration it was in; its checkpoints are whole, and resuming gives the run an
    uninterrupted one would."""


class DataError(MetagradError, RuntimeError):
    """A dataset could not be fetched or failed verification (no network, HTTP error, checksum mismatch)."""


def suggest(value: Any, options: Any) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else nothing."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Refuse a value that is not one of ``allowed``, naming them (and a near miss)."""
    if value not in allowed:
        shown = ", ".join(a if a else "'' (the default)" for a in allowed)
        raise ConfigError(f"unknown {name} '{value}'{suggest(value, allowed)}; choose one of {shown}")


def check_whole(name: str, value: object, low: int | None = None, hint: str = "") -> None:
    """Refuse a count that is not a whole number (``True`` and ``2.0`` included), or below ``low`` when given;
    ``hint`` (e.g. what 0 means) is added to the message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        at_least = "" if low is None else f" >= {low}"
        raise ConfigError(f"{name} {value!r} must be a whole number{at_least}{f' ({hint})' if hint else ''}")


def flag(name: str) -> str:
    """A setting's command-line option: ``inner_lr`` -> ``--inner-lr``."""
    return "--" + name.replace("_", "-")


def check_flag(name: str, value: object) -> None:
    """Refuse a switch that is not ``True`` or ``False`` (the string "False" is true to Python: it picked
    first-order MAML without a word)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} {value!r} must be True or False")


def check_range(name: str, value: object, low: float = -math.inf) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite real numbers with low <= high (and at least ``low``), as floats, or a
    ConfigError naming it."""
    pair = value if isinstance(value, tuple | list) and len(value) == 2 else (math.nan, math.nan)
    lo, hi = (real_number(v) for v in pair)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo >= low):
        at_least = f" >= {low:g}" if math.isfinite(low) else ""
        raise ConfigError(f"{name} {value!r} must be a pair [low, high] of finite numbers{at_least}")
    if not lo <= hi:
        raise ConfigError(f"{name} range [{lo:g}, {hi:g}] is empty; give [low, high] with low <= high")
    return lo, hi


def real_number(x: object) -> float:
    """A real number as a float (numpy and 0-d torch scalars too); NaN for what is not one (bools and strings
    included, which float() would take)."""
    if isinstance(x, bool | str | bytes):
        return math.nan
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def memory_bytes() -> int:
    """This machine's physical memory (0 where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_compiler() -> None:
    """Stop with the fix where ``torch.compile`` cannot build kernels for the CPU: inductor needs a C++ compiler.
    (Asked through inductor's own search, a private API: where it has moved, nothing is checked.)"""
    try:
        from torch._inductor import cpp_builder, exc

        search = cpp_builder.get_cpp_compiler
        missing: tuple[type[Exception], ...] = (exc.InvalidCxxCompiler, RuntimeError)  # RuntimeError: Windows' cl
    except (ImportError, AttributeError):
        return
    try:
        search()
    except missing:
        raise ConfigError("compile=True: torch.compile builds its CPU kernels with a C++ compiler and found none (g++, "
                          "or the one $CXX names); install one (e.g. apt install g++) or set compile false") from None


def check_memory(needed: float, what: str, fix: str) -> None:
    """Refuse, before allocating, a size that cannot fit in this machine's memory (``needed`` bytes)."""
    total = memory_bytes()
    if total and needed > total:
        raise ConfigError(f"{what} needs about {needed / 2**30:,.1f} GiB, more than this machine's "
                          f"{total / 2**30:,.1f} GiB; {fix}")

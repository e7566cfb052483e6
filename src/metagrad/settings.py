"""The one config system: flat dataclasses whose fields carry their TOML section and help line.

``Settings`` is the base of the supervised ``Config`` and the meta-RL ``RLConfig``: reading sectioned TOML (a
preset by name or a file), writing it back, ``replace`` with coercion and validation, and the command-line options
(``--inner-lr`` for ``inner_lr``) generated from the fields. A new option is one field; every value is checked in
the subclass's ``validate``. Unknown keys, misplaced keys and bad values stop with a message naming the fix.
"""

from __future__ import annotations

import argparse
import functools
import math
import numbers
import os
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import tomllib

from .errors import ConfigError, check_choice, check_whole, flag, suggest

S = TypeVar("S", bound="Settings")


def opt(default: Any, section: str, help: str) -> Any:
    """A config field with its TOML section and CLI help."""
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata={"section": section, "help": help})
    return field(default=default, metadata={"section": section, "help": help})


def check_seed(name: str, value: int) -> None:
    """A seed that torch's and numpy's generators both take: 0 <= seed < 2**63."""
    check_whole(name, value)
    if not 0 <= value < 2**63:
        raise ConfigError(f"{name} {value} must be an integer from 0 to 2**63 - 1")


FLOAT32_MAX = 3.4028234663852886e38  # the largest float32


def check_outer_lr(value: float) -> None:
    """An outer step size torch's optimizers can take: positive and within float32 (they cast it to the weights')."""
    if not 0 < value <= FLOAT32_MAX:
        raise ConfigError(f"outer_lr {value} must be positive and within float32's range (e.g. 0.001)")


@dataclass
class Settings:
    """Base of a run's configuration: a flat dataclass of ``opt`` fields grouped in ``SECTIONS``."""

    SECTIONS: ClassVar[tuple[str, ...]] = ()
    FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset()  # besides [eval]: may change when a run resumes
    # fields only some configs use: name -> (the field that decides, the values with which it is used)
    APPLIES: ClassVar[dict[str, tuple[str, tuple[Any, ...]]]] = {}
    # eval_seed + offset: the seeds of held-out task streams (seeds.py), which the training seed must not take
    HELD_OUT_SEEDS: ClassVar[dict[int, str]] = {0: "the test tasks"}

    time_budget: float = opt(0.0, "train", "stop (with a checkpoint) after this many minutes (0: no limit)")

    def validate(self: S) -> S:
        """Check every value; raise ``ConfigError`` naming the first bad one and the fix (subclasses add theirs)."""
        if self.time_budget < 0:
            raise ConfigError(f"time_budget {self.time_budget} must be >= 0 minutes")
        for name in ("seed", "eval_seed"):
            check_seed(name, getattr(self, name, 0))
        seed, eval_seed = getattr(self, "seed", None), getattr(self, "eval_seed", None)
        for offset, what in self.HELD_OUT_SEEDS.items() if seed is not None and eval_seed is not None else ():
            if seed == eval_seed + offset:
                at = f"eval_seed + {offset}" if offset else "eval_seed"
                raise ConfigError(f"seed {seed} equals {at}, the seed of {what}: the training tasks' random stream "
                                  "would start as theirs does; choose another seed (or eval_seed)")
        return self

    def check_types(self) -> None:
        """Each value of its field's type: a config built in Python is not converted as a file's or the command
        line's values are, and a string or a lone number where a list belongs failed deep in a range check."""
        cls = type(self)
        for f in fields(self):
            value, hint = getattr(self, f.name), _hint(cls, f)
            if value is None and type(None) in typing.get_args(hint):
                continue
            base, many = base_type(cls, f), is_tuple(cls, f)
            if not (all(_is_a(base, v) for v in value) if many and isinstance(value, tuple | list) else
                    not many and _is_a(base, value)):
                kinds = {bool: ("true or false", "true or false values"), int: ("an integer", "integers"),
                         float: ("a number", "numbers"), str: ("a string", "strings")}.get(base, (base, base))
                default = list(f.default_factory()) if many and f.default_factory is not MISSING else f.default
                raise ConfigError(f"{f.name} {value!r} must be {'a list of ' + kinds[1] if many else kinds[0]}, e.g. "
                                  f"{default!r}")

    def applies(self, name: str) -> bool:
        """Whether this config uses field ``name`` (its family, algo or outer step may ignore it)."""
        return not self.ignored(name)

    def ignored(self, name: str) -> str:
        """Why this config ignores field ``name`` ("" where it uses it): ``APPLIES`` names the field that decides and
        the values with which it is used; joint training has no inner loop; subclasses add the cases one field cannot
        decide."""
        if name == "inner_steps" and getattr(self, "algo", "") == "joint":
            return "is not used by algo joint: it trains without an inner loop (evaluation adapts for eval_steps)"
        if name not in self.APPLIES:
            return ""
        by, values = self.APPLIES[name]
        now = getattr(self, by)
        if now in values:
            return ""
        def word(v: Any) -> str:
            return str(v).lower() if isinstance(v, bool) else str(v)
        return f"applies to {by} {', '.join(map(word, values))} only; this config's {by} is {word(now)}"

    def check_applies(self, given: typing.Iterable[str], flag: typing.Callable[[str], str] = str,
                      context: str = "") -> None:
        """Each of the ``given`` fields (set explicitly, not carried as a default) is one this config uses: where its
        family, algo or outer step ignores it, it would be stored and ignored, so it is an error (``context`` added
        to its message)."""
        for name in given:
            if reason := self.ignored(name):
                raise ConfigError(f"{flag(name)} {reason}{context}: remove it")

    def check_choices(self, choices: dict[str, tuple[str, ...]]) -> None:
        """Each named field holds one of its allowed values."""
        for name, allowed in choices.items():
            check_choice(name, getattr(self, name), allowed)

    def check_at_least(self, lows: dict[str, int]) -> None:
        """Each named field is a whole number at least its bound."""
        for name, low in lows.items():
            check_whole(name, getattr(self, name), low)

    def free_on_resume(self) -> set[str]:
        """Fields that may differ between a run's checkpoint and the config that resumes it."""
        return set(self.FREE_ON_RESUME) | {f.name for f in fields(self) if f.metadata["section"] == "eval"}

    def budget_fixed(self) -> bool:
        """Whether the iteration budget is fixed when a run starts: a linear schedule anneals the outer step to 0
        over it, so another budget would be another trajectory."""
        return getattr(self, "outer_lr_schedule", None) == "linear"

    def fixed_because(self, name: str) -> str:
        """Why setting ``name`` may not change on resume where it is not plain (as `` (...)``); else ""."""
        if name == "iterations" and self.budget_fixed():
            return (" (outer_lr_schedule 'linear' anneals the outer step to 0 over the run's iterations: they are its "
                    "whole budget, fixed when it starts)")
        return ""

    def resume_differences(self, saved: Settings) -> list[str]:
        """The fields in which this config differs from the one a run was trained with, where that matters."""
        free = self.free_on_resume()
        return [f.name for f in fields(self) if f.name not in free and getattr(saved, f.name) != getattr(self, f.name)]

    def resume_changes(self, saved: Settings, run_dir: str | Path) -> dict[str, list[Any]]:
        """The fields that differ from the config run ``run_dir`` was trained with (``saved``), as ``{name: [old,
        new]}`` for its log; a CheckpointError where one of them may not change on resume."""
        from .errors import CheckpointError

        old, new = saved.to_dict(), self.to_dict()
        changed = self.resume_differences(saved)
        if changed:
            diffs = ", ".join(f"{k} {old[k]!r} in the run, {new[k]!r} given{self.fixed_because(k)}" for k in changed)
            raise CheckpointError(f"{run_dir} was trained with another config ({diffs}); resume with the run's "
                                  "own options (`metagrad train --out RUN --resume` takes them from the run; "
                                  "`metagrad reproduce`: the options it was run with) or choose another --out")
        return {k: [old[k], new[k]] for k in new if old[k] != new[k]}

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), by field name."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def to_sections(self) -> dict[str, dict[str, Any]]:
        """The config as ``{section: {key: value}}`` (lists for tuples), as written in TOML and JSON."""
        out: dict[str, dict[str, Any]] = {s: {} for s in self.SECTIONS}
        values = self.to_dict()
        for f in fields(self):
            out[f.metadata["section"]][f.name] = values[f.name]
        return out

    @classmethod
    def from_sections(cls: type[S], data: dict[str, Any], source: str = "config") -> S:
        """Build from ``{section: {key: value}}``; every key must exist in its section."""
        by_name = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for section, entries in data.items():
            if isinstance(entries, list) and section in cls.SECTIONS:
                raise ConfigError(f"{source}: [[{section}]] is an array of tables; a config has one [{section}] "
                                  "(single brackets)")
            if not isinstance(entries, dict):
                raise ConfigError(f"{source}: '{section} = ...' is outside any section; put it under one of "
                                  f"{', '.join(f'[{s}]' for s in cls.SECTIONS)}"
                                  + (f" (it belongs in [{by_name[section].metadata['section']}])"
                                     if section in by_name else ""))
            if section not in cls.SECTIONS:
                raise ConfigError(f"{source}: unknown section [{section}]{suggest(section, cls.SECTIONS)}; "
                                  f"sections are {', '.join(f'[{s}]' for s in cls.SECTIONS)}")
            for key, value in entries.items():
                f = by_name.get(key)
                if f is None or f.metadata["section"] != section:
                    where = f" (it belongs in [{f.metadata['section']}])" if f else ""
                    names = [n for n, g in by_name.items() if g.metadata["section"] == section]
                    raise ConfigError(f"{source}: unknown key '{key}' in [{section}]{where}"
                                      f"{'' if where else suggest(key, names)}")
                values[key] = coerce(cls, f, value, f"{source}: {key}")
        return cls(**values)

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """From ``to_dict``'s output (e.g. a checkpoint's sidecar), validated."""
        return cls().replace(**data)

    def replace(self: S, **changes: Any) -> S:
        """A copy with some fields changed (values coerced and validated)."""
        by_name = {f.name: f for f in fields(self)}
        for key in changes:
            if key not in by_name:
                raise ConfigError(f"unknown config key '{key}'{suggest(key, list(by_name))}")
        data = asdict(self)
        data.update({k: coerce(type(self), by_name[k], v, k) for k, v in changes.items()})
        return type(self)(**data).validate()

    def to_toml(self) -> str:
        """The config as a TOML document (every key, by section)."""
        lines = []
        for section, entries in self.to_sections().items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in entries.items()]
            lines.append("")
        return "\n".join(lines)

    # ------------------------------------------------------------------ the command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None,
                      title: str = "[{section}] options (override the config file)") -> None:
        """One ``--option`` per field of ``sections``; an unset option leaves the config file's value."""
        for section in sections or cls.SECTIONS:
            group = parser.add_argument_group(title.format(section=section))
            for f in fields(cls):
                if f.metadata["section"] != section or _has_flag(parser, f.name):
                    continue
                help = f"{f.metadata['help']} (built-in default: {cls.shown_default(f.name)})"
                if base_type(cls, f) is bool:
                    group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                       help=help)
                else:
                    metavar = "A,B,..." if is_tuple(cls, f) else base_type(cls, f).__name__.upper()
                    group.add_argument(flag(f.name), dest=f.name, default=None, metavar=metavar, help=help)

    @classmethod
    def shown_default(cls, name: str) -> str:
        """A field's built-in default as ``--help`` writes it (tuples comma-separated, booleans lower case)."""
        f = next(f for f in fields(cls) if f.name == name)
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, tuple):
            return ",".join(map(str, default))
        return str(default).lower() if isinstance(default, bool) else str(default)

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The fields given on the command line."""
        names = {f.name for f in fields(cls)}
        return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _has_flag(parser: argparse.ArgumentParser, dest: str) -> bool:
    return any(a.dest == dest for a in parser._actions)


# ---------------------------------------------------------------------- files and presets
def presets_dir() -> Path:
    return Path(str(resources.files("metagrad") / "configs"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def preset_path(name_or_path: str | Path) -> Path:
    """The file of a config given as a path or a preset name."""
    path = Path(name_or_path)
    if not path.exists() and (presets_dir() / f"{name_or_path}.toml").exists():
        path = presets_dir() / f"{name_or_path}.toml"
    if not path.exists():
        raise ConfigError(f"config file '{name_or_path}' not found{suggest(name_or_path, preset_names())}; give a "
                          f"path or a preset: {', '.join(preset_names())}")
    return path


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's tables, or one line naming what is wrong with the file."""
    if path.is_dir():
        raise ConfigError(f"config '{path}' is a directory; give a .toml file or a preset name")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a config is TOML text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None


# ---------------------------------------------------------------------- values
def _hint(cls: type, f: Any) -> Any:
    return _type_hints(cls)[f.name]


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A config class's field types, read once (``get_type_hints`` evaluates every annotation: ~3 ms a call)."""
    return typing.get_type_hints(cls)


def is_tuple(cls: type, f: Any) -> bool:
    return typing.get_origin(_hint(cls, f)) is tuple


def base_type(cls: type, f: Any) -> type:
    hint = _hint(cls, f)
    if typing.get_origin(hint) is tuple or isinstance(hint, types.UnionType):
        return typing.get_args(hint)[0]
    return hint


def _is_a(base: type, value: Any) -> bool:
    """Whether ``value`` is of a config field's type, as given in Python (an int is a number; a bool is neither)."""
    if base in (int, float):
        return isinstance(value, numbers.Integral if base is int else numbers.Real) and not isinstance(value, bool)
    return isinstance(value, str | os.PathLike) if base is str else isinstance(value, base)  # a folder as a Path


def list_items(text: str) -> list[str] | None:
    """The items of a command-line list: ``5,10`` or TOML's array syntax ``[5, 10]`` (``[]`` for none; spaces and
    quotes ignored); None where an entry inside is empty (a typo: one trailing comma is harmless)."""
    text = text.replace(" ", "")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].replace('"', "").replace("'", "")
    parts = text.split(",")
    return None if "" in parts[:-1] else [p for p in parts if p]


def coerce(cls: type, f: Any, value: Any, where: str) -> Any:
    """Convert a TOML or command-line value to the field's type, or raise a ConfigError naming it."""
    base = base_type(cls, f)
    if is_tuple(cls, f):
        if isinstance(value, str):
            items = list_items(value)
            if items is None:
                raise ConfigError(f"{where}: '{value}' has an empty entry; give values separated by single commas, "
                                  "e.g. 5,10")
            value = items
        elif not isinstance(value, list | tuple):
            value = [value]
        return tuple(scalar(base, v, where) for v in value)
    return scalar(base, value, where)


def scalar(base: type, value: Any, where: str) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: '{value}' is not true or false")
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {value!r} must be a string")
        return value
    try:
        if isinstance(value, bool):  # a TOML true is no number, though Python's int and float take it
            raise ValueError
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        shown = str(value).lower() if isinstance(value, bool) else repr(value)  # a TOML boolean as TOML writes it
        raise ConfigError(f"{where}: {shown} is not {'an integer' if base is int else 'a number'}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return number


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)

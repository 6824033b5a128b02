"""Settings: defaults live on a frozen dataclass; the command-line flags are made from it.

A field declared with :func:`setting` is also a flag (``--field-name`` unless named
otherwise), with the field's default, its type and a help text, so a default is written
once and ``--help`` shows it. A command adds the flags of its config class with
:func:`add_flags` and builds the config with :func:`from_args`; what a command computes
itself (a value from the environment, a file it reads) stays an ordinary argument and
is passed to :func:`from_args` by keyword.

:func:`differences` is the one comparison of stored settings (a manifest, a checkpoint)
with the current ones, for every "rerun resumes only with the same settings" check.
(timm's ``train.py`` is the model: one parser, defaults in one place, the resolved
settings saved with the run.)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cdul.core.errors import ConfigError

__all__ = [
    "Default",
    "add_flags",
    "differences",
    "flag_name",
    "from_args",
    "read_settings_file",
    "setting",
]

_FLAG = "cdul.flag"


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    group: str | None = None,
    **argparse_options: Any,
) -> Any:
    """A dataclass field that is also a command-line flag.

    ``flag``: the flag's name (default ``--`` + the field name with dashes); a boolean
    that defaults to True becomes ``--no-NAME`` unless ``flag`` says otherwise.
    ``group``: the ``--help`` section. Other keywords go to ``add_argument`` (``choices``,
    ``metavar``, ``type`` for fields whose default is None).
    """
    options = {"help": help, "flag": flag, "group": group, **argparse_options}
    return dataclasses.field(default=default, metadata={_FLAG: options})


class Default:
    """A flag's value when it was not given: ``from_args`` can then tell a preset's value
    (which replaces defaults, not flags) from one the user typed."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)

    def __str__(self) -> str:  # what --help's %(default)s shows
        if isinstance(self.value, tuple):  # as it is typed: a,b,c
            return ",".join(str(v) for v in self.value)
        return str(self.value)

    def __eq__(self, other: object) -> bool:
        return self.value == (other.value if isinstance(other, Default) else other)

    __hash__ = None  # type: ignore[assignment]


def _flag_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if _FLAG in f.metadata]


def flag_name(cls: type, field: str) -> str:
    """The flag a field is set with (for error messages that name it)."""
    (found,) = [f for f in _flag_fields(cls) if f.name == field]
    return _argument(cls, found)[0]


def _argument(cls: type, field: dataclasses.Field) -> tuple[str, dict[str, Any]]:
    options = dict(field.metadata[_FLAG])
    flag, options["dest"] = options.pop("flag"), field.name
    options.pop("group")
    default = field.default
    hint = _type_of(cls, field)
    if hint is bool and default is not None:
        name = flag or ("--no-" if default else "--") + field.name.replace("_", "-")
        options["action"] = "store_false" if default else "store_true"
    else:
        name = flag or "--" + field.name.replace("_", "-")
        if hint is bool:  # bool | None: --x / --no-x, None meaning "decide for me"
            options["action"] = argparse.BooleanOptionalAction
        elif "type" not in options and hint in (int, float):
            options["type"] = hint
        if default is not None and "default" not in options["help"]:
            options["help"] += " (default: %(default)s)"
    options["default"] = Default(default)
    return name, options


@functools.cache  # one resolution of a class's (string) annotations, not one per field
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_of(cls: type, field: dataclasses.Field) -> Any:
    """The field's type, with ``X | None`` read as X."""
    hint = _type_hints(cls)[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    return hint


def add_flags(
    parser: argparse.ArgumentParser, cls: type, exclude: Iterable[str] = ()
) -> argparse.ArgumentParser:
    """Add a flag for every :func:`setting` field of ``cls`` (but ``exclude``), and
    ``--config FILE``: a JSON (or, with PyYAML installed, YAML) mapping of field names
    to values that replaces the defaults; flags given on the command line still win."""
    groups: dict[str, Any] = {}
    skipped = set(exclude)
    parser.add_argument(
        "--config",
        dest="_settings_file",
        metavar="FILE",
        default=None,
        help="settings file (JSON, or YAML with PyYAML): field names -> values, replacing "
        "the defaults below; flags still win (a run's stored config.json works)",
    )
    for field in _flag_fields(cls):
        if field.name in skipped:
            continue
        group_name = field.metadata[_FLAG]["group"]
        target: Any = parser
        if group_name:
            target = groups.setdefault(group_name, parser.add_argument_group(group_name))
        name, options = _argument(cls, field)
        target.add_argument(name, **options)
    return parser


def read_settings_file(path: str, cls: type) -> dict[str, Any]:
    """The settings a ``--config`` file gives for ``cls``: its keys that name flag
    fields (others, such as a stored run's paths, are not settings and are ignored);
    ConfigError for an unreadable file, one that is not a mapping, or a key that is
    neither a field nor anything ``cls`` knows."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the settings file {path}: {error.strerror}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml  # only needed for YAML files

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise ConfigError(f"{path}: YAML settings need PyYAML; use JSON instead") from None
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError(f"the settings file {path} does not parse: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the settings file {path} must hold a mapping of names to values")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"the settings file {path} names unknown settings {unknown}")
    flags = {f.name for f in _flag_fields(cls)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in flags}


def from_args(
    cls: type, args: argparse.Namespace, preset: Mapping[str, Any] | None = None, **values: Any
) -> Any:
    """``cls`` from the parsed flags of its fields. Flags that were not given take, in
    this order of precedence, the ``--config`` file's value, the ``preset``'s, the
    field's default; ``values`` win over everything."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(preset or {}) - names
    if unknown:
        raise ValueError(f"preset names unknown settings {sorted(unknown)}")
    defaults = dict(preset or {})
    settings_file = getattr(args, "_settings_file", None)
    if settings_file:
        defaults.update(read_settings_file(settings_file, cls))
    parsed = {}
    for name, value in vars(args).items():
        if name in names:
            default = isinstance(value, Default)
            parsed[name] = defaults.get(name, value.value) if default else value
    return cls(**{**parsed, **values})


def differences(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
    stored_as: str = "stored",
    current_as: str = "now",
) -> list[str]:
    """``"name: stored 'a', now 'b'"`` for every setting of ``current`` whose value
    differs from ``stored`` (one missing there counts as different), ``ignore`` aside."""
    skipped = set(ignore)
    return [
        f"{name}: {stored_as} {stored.get(name)!r}, {current_as} {value!r}"
        for name, value in current.items()
        if name not in skipped and stored.get(name) != value
    ]

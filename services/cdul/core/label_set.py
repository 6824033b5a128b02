"""A label set: the class names and the prompt template the CLIP service scores against.

Its own module, free of torch and open_clip, because both sides of the wire use it:
the service (which encodes the prompts) and the labeler's client (which sends the set
by value or by its digest), and the labeler's image installs no CLIP.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cdul.core.errors import CdulError, ConfigError

DEFAULT_TEMPLATE = "a photo of a {}"
#: Prompt ensembles known by name: open_clip's ImageNet template sets (80 and 7
#: templates); the CLIP service expands them (:func:`cdul.core.clip_scoring.prompt_templates`).
TEMPLATE_SETS = ("openai", "simple")


def read_class_file(
    path: str | Path, error: type[CdulError] = ConfigError, what: str = "class list"
) -> tuple[str, ...]:
    """Class names (or other entries: ``what``) from a text file, one per line (blank
    lines and ``#`` comments skipped); ``error`` (naming the file) if it is unreadable,
    empty or repeats an entry."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as problem:
        reason = getattr(problem, "strerror", None) or problem
        raise error(f"cannot read the {what} {path}: {reason}") from None
    names = [line.strip() for line in lines]
    names = [name for name in names if name and not name.startswith("#")]
    if not names:
        raise error(f"the {what} {path} is empty")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise error(f"the {what} {path} repeats {', '.join(repeated)}")
    return tuple(names)


def parse_class_names(spec: str) -> tuple[str, ...]:
    """Class names from a file (see :func:`read_class_file`) or, when ``spec`` is not
    an existing file, a comma-separated list."""
    if Path(spec).expanduser().is_file():
        return read_class_file(spec)
    if "," not in spec and ("/" in spec or spec.endswith(".txt")):
        # Looks like a path that is not there, not a one-class list.
        raise ConfigError(f"class file {spec!r} does not exist")
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    if not names:
        raise ConfigError(f"class list {spec!r} names no classes")
    if len(set(names)) != len(names):
        raise ConfigError(f"class list {spec!r} repeats a class name")
    return names


def read_templates(spec: str) -> tuple[str, ...]:
    """A prompt ensemble: a name from :data:`TEMPLATE_SETS` (kept as the name), or a
    file of templates, one per line, each with one ``{}`` (blank lines, ``#`` skipped)."""
    if spec in TEMPLATE_SETS:
        return (spec,)
    if not Path(spec).expanduser().is_file():
        raise ConfigError(
            f"--templates {spec!r}: not a template set ({', '.join(TEMPLATE_SETS)}) "
            "nor a file of templates"
        )
    return read_class_file(spec, what="template file")


@dataclass(frozen=True)
class LabelSet:
    """Class names and the prompt template that turns each into a sentence, or a
    prompt ensemble: several templates (or named sets of them) averaged per class."""

    classes: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE
    templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("the label set is empty: give at least one class name")
        if any(not c.strip() for c in self.classes):
            raise ConfigError("the label set has an empty class name")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"the label set repeats a class name: {list(self.classes)}")
        for template in self.templates or (self.template,):
            if template in TEMPLATE_SETS and self.templates:
                continue
            if template.count("{}") != 1:
                raise ConfigError(
                    f"prompt template {template!r} must contain exactly one '{{}}' placeholder"
                )
            try:
                template.format("x")
            except (IndexError, KeyError, ValueError) as error:
                raise ConfigError(
                    f"prompt template {template!r} has an unknown placeholder: {error}"
                ) from None

    def prompts(self) -> list[str]:
        """The single template's prompts (a prompt ensemble has several per class)."""
        return [self.template.format(c) for c in self.classes]

    def digest(self) -> str:
        """A stable hash naming this label set (cache key, wire reference)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:  # asked for several times per request: hashed once
        text = "\x1f".join((self.template, *self.classes))
        if self.templates:  # unchanged digests for single-template sets
            text += "\x1e" + "\x1f".join(self.templates)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

"""A label set: the class names and the prompt template the CLIP service scores against.

Its own module, free of torch and open_clip, because both sides of the wire use it:
the service (which encodes the prompts) and the labeler's client (which sends the set
by value or by its digest), and the labeler's image installs no CLIP.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from cdul.core.errors import ConfigError

DEFAULT_TEMPLATE = "a photo of a {}"


@dataclass(frozen=True)
class LabelSet:
    """Class names and the prompt template that turns each into a sentence."""

    classes: tuple[str, ...]
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError("the label set is empty: give at least one class name")
        if any(not c.strip() for c in self.classes):
            raise ConfigError("the label set has an empty class name")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"the label set repeats a class name: {list(self.classes)}")
        if self.template.count("{}") != 1:
            raise ConfigError(
                f"prompt template {self.template!r} must contain exactly one '{{}}' placeholder"
            )
        try:
            self.prompts()
        except (IndexError, KeyError, ValueError) as error:
            raise ConfigError(
                f"prompt template {self.template!r} has an unknown placeholder: {error}"
            ) from None

    def prompts(self) -> list[str]:
        return [self.template.format(c) for c in self.classes]

    def digest(self) -> str:
        """A stable hash naming this label set (cache key, wire reference)."""
        return self._digest

    @functools.cached_property
    def _digest(self) -> str:  # asked for several times per request: hashed once
        text = "\x1f".join((self.template, *self.classes))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

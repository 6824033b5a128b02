"""The labeler's settings: :class:`LabelConfig`, whose fields are ``cdul label``'s flags
(``cdul relabel`` takes the label-set and recipe ones)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cdul.core.errors import ConfigError
from cdul.core.label_set import DEFAULT_TEMPLATE, read_templates
from cdul.core.method.recipes import AGGREGATION_FORMS, DEBIAS, NAMED_RECIPES, LabelRecipe
from cdul.core.method.snippets import DEFAULT_SNIPPET_SPEC, SNIPPET_FORMS, parse_snippet_spec
from cdul.core.pseudo_labels import shard_name
from cdul.core.settings import setting


@dataclass(frozen=True)
class LabelConfig:
    dataset: str
    output: str
    endpoints: tuple[str, ...]
    snippet_spec: str = setting(
        DEFAULT_SNIPPET_SPEC, f"{SNIPPET_FORMS} (dense: ResNet CLIPs)",
        flag="--snippets", group="label recipe",
    )  # fmt: skip
    recipe_name: str = setting(
        "default", "the label recipe to start from: default (max over snippets, global weight "
        "0.25, chosen by measurement) or paper (the CDUL paper's Eq. 5-7); the recipe flags "
        "below change parts of it", flag="--recipe", choices=tuple(NAMED_RECIPES),
        group="label recipe",
    )  # fmt: skip
    zeta: float | None = setting(None, "Eq. 6 threshold (--aggregation paper; default 0.5)",
                                 type=float, group="label recipe")  # fmt: skip
    template: str = setting(DEFAULT_TEMPLATE, "prompt template", group="label recipe")
    templates: str | None = setting(
        None, "a prompt ensemble instead of --template: openai or simple (open_clip's "
        "ImageNet sets, 80 and 7 templates) or a file of templates, one per line",
        metavar="SET|FILE", group="label recipe",
    )  # fmt: skip
    aggregation: str | None = setting(None, f"snippet scores per class: {AGGREGATION_FORMS} "
                                      "(default: the recipe's)", type=str,
                                      group="label recipe")  # fmt: skip
    global_weight: float | None = setting(
        None, "weight w of the global score: w*global + (1-w)*aggregate (Eq. 7: 0.5; default: "
        "the recipe's)", type=float, group="label recipe",
    )  # fmt: skip
    debias: str | None = setting(None, "class-mean: divide each class by its mean top-1 score "
                                 "over the dataset (CCD), at merge (default: the recipe's, none)",
                                 choices=DEBIAS, group="label recipe")  # fmt: skip
    store_cosines: bool = setting(
        True, "do not store every snippet's cosines (S x C floats per image; label-sweep "
        "then recomputes only the paper and max rules)",
    )  # fmt: skip
    store_embeddings: bool = setting(
        False, "also store every image's view embeddings (float16, (1 + S) x D x 2 bytes per "
        "image; scored as stored): 'cdul relabel' then labels new classes or prompts without "
        "encoding, and labeling a grown dataset into this run encodes only new or changed images",
    )  # fmt: skip
    classes: tuple[str, ...] | None = None
    shard_index: int = 0
    num_shards: int = 1
    part_size: int = setting(64, "images per atomic part (the most a kill loses)")
    max_in_flight: int = setting(32, "requests outstanding per stream")
    streams_per_endpoint: int = setting(
        1,
        "ScoreStream calls per endpoint; each goes to the next address of a target that "
        "resolves to several (spreads one labeler over the CLIP replicas)",
    )
    skip_bad: bool = setting(False, "skip unreadable images and report them")
    limit: int | None = setting(None, "label only the first N images", type=int, metavar="N")
    wait_for_service_s: float = setting(
        120.0, "seconds to wait for the CLIP service to come up", flag="--wait-for-service",
        metavar="S",
    )  # fmt: skip
    deadline_s: float = 300.0
    progress: bool = setting(True, "no progress bar")

    def __post_init__(self) -> None:
        parse_snippet_spec(self.snippet_spec)
        self.recipe()  # validates aggregation, zeta, global weight and debias
        if self.templates is not None:
            read_templates(self.templates)
        positive = {"part-size": self.part_size, "max-in-flight": self.max_in_flight,
                    "streams-per-endpoint": self.streams_per_endpoint,
                    "num-shards": self.num_shards}  # fmt: skip
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name} must be >= 1, got {value}")
        shard_name(self.shard_index, self.num_shards)  # the index within the shards
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if self.wait_for_service_s < 0:
            raise ConfigError(f"--wait-for-service must be >= 0, got {self.wait_for_service_s}")
        if not self.endpoints:
            raise ConfigError("no CLIP service endpoint given (--endpoint or $CDUL_CLIP_ENDPOINTS)")

    def recipe(self) -> LabelRecipe:
        """The named recipe with what the recipe flags change."""
        base = NAMED_RECIPES[self.recipe_name]
        changes = {"aggregation": self.aggregation, "zeta": self.zeta,
                   "global_weight": self.global_weight, "debias": self.debias}  # fmt: skip
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})

    def prompt_templates(self) -> list[str] | None:
        return None if self.templates is None else list(read_templates(self.templates))

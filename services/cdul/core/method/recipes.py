"""Label recipes: the paper's Eq. 5-7 and the alternatives a user can choose instead.

A recipe turns one image's global class scores ``g`` (Eq. 2, ``(C,)``) and its
snippet class scores ``s_i`` (Eq. 4, ``(S, C)``) into the initial pseudo label ``y``
in three steps, each a choice:

1. **aggregation** of the snippet scores per class (registry :data:`AGGREGATIONS`; a new
   rule is one function and one entry there):

   - ``paper``   Eq. 5-6: ``alpha_j = max_i s_ij``, ``beta_j = min_i s_ij``;
     ``alpha_j`` if ``alpha_j >= zeta``, else ``beta_j`` (the default).
   - ``max``     ``alpha_j``: the most confident snippet decides (multiple-instance
     learning's max pooling; the paper's rule with zeta = 0).
   - ``mean``    ``1/S sum_i s_ij``: average pooling over snippets.
   - ``topk:K``  the mean of the K largest ``s_ij``: WILDCAT-style top-k pooling
     (Durand et al., CVPR 2017), between max (K = 1) and mean (K = S); a single
     spurious snippet no longer decides alone. K larger than S means all S.

2. **mix** of global and local: ``y_j = w * g_j + (1 - w) * a_j`` with global weight
   ``w`` (Eq. 7 is w = 0.5; w = 0 uses the snippets only, w = 1 the global score only).

3. **debias** over the whole dataset (a second pass, after every image is scored):

   - ``none``        the default.
   - ``class-mean``  CCD's debiasing (Kim & Shim, CVPR 2025): CLIP favours some classes
     everywhere, so each class's scores are divided by its *bias* ``b_j``, the mean
     top-1 score over the images whose top-1 class is ``j``. Here scores are multiplied
     by ``mean(b) / b_j`` (so the average scale is kept) and clipped to [0, 1] (they
     stay probabilities for the trainer). A class that is nobody's top-1 gets the mean
     bias, i.e. is left as it is.

Everything is a pure function on tensors; :meth:`LabelRecipe.apply` is the one place
steps 1 and 2 are applied (the labeler, ``label-sweep``, the in-process scorer and the
world's report call it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from cdul.core.errors import ConfigError
from cdul.core.method.aggregation import DEFAULT_ZETA, aggregate, alpha_beta, check_snippets

PAPER = "paper"
DEBIAS = ("none", "class-mean")
DEFAULT_GLOBAL_WEIGHT = 0.5


def _masked(scores: torch.Tensor, valid: torch.Tensor | None, fill: float) -> torch.Tensor:
    return scores if valid is None else scores.masked_fill(~valid.unsqueeze(-1), fill)


def _counts(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return torch.full((scores.shape[0], 1), float(scores.shape[1]))
    return valid.sum(dim=1, keepdim=True).float()


def aggregate_paper(
    snippets: torch.Tensor, valid: torch.Tensor | None, zeta: float
) -> torch.Tensor:
    alpha, beta = alpha_beta(snippets, valid)
    return aggregate(alpha, beta, zeta)


def aggregate_max(snippets: torch.Tensor, valid: torch.Tensor | None, _: float) -> torch.Tensor:
    return alpha_beta(snippets, valid)[0]


def aggregate_mean(snippets: torch.Tensor, valid: torch.Tensor | None, _: float) -> torch.Tensor:
    check_snippets(snippets, valid)
    return _masked(snippets, valid, 0.0).sum(dim=1) / _counts(snippets, valid)


def aggregate_topk(k: int) -> Callable[[torch.Tensor, torch.Tensor | None, float], torch.Tensor]:
    def topk(snippets: torch.Tensor, valid: torch.Tensor | None, _: float) -> torch.Tensor:
        check_snippets(snippets, valid)
        # Padding sorts last (-inf), and an image with fewer than k real snippets
        # averages all of them: divide by min(k, its count).
        ranked = _masked(snippets, valid, float("-inf")).sort(dim=1, descending=True).values
        top = ranked[:, : min(k, snippets.shape[1])]
        total = top.masked_fill(top == float("-inf"), 0.0).sum(dim=1)
        return total / _counts(snippets, valid).clamp(max=k)

    return topk


AggregateFn = Callable[[torch.Tensor, torch.Tensor | None, float], torch.Tensor]


@dataclass(frozen=True)
class Aggregation:
    """A rule of step 1: how ``--aggregation NAME[:K]`` is computed."""

    form: str
    """How it is spelled (``paper``, ``topk:K``), for help texts and errors."""
    build: Callable[[int | None], AggregateFn]
    """The rule on ``(N, S, C)`` snippet scores (with an optional ``(N, S)`` mask and
    zeta, which only ``paper`` reads), given the ``:K`` parameter (None without one)."""
    from_alpha_beta: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
    """The same rule from alpha and beta alone (Eq. 5), when that is enough: such rules
    apply to any stored run and need no snippet cosines."""

    @property
    def takes_parameter(self) -> bool:
        return ":" in self.form


def _fixed(rule: AggregateFn) -> Callable[[int | None], AggregateFn]:
    return lambda _: rule


#: The registry: the name before any ':' -> its rule. A new rule is one entry here.
AGGREGATIONS: dict[str, Aggregation] = {
    PAPER: Aggregation("paper (Eq. 5-6)", _fixed(aggregate_paper), aggregate),
    "max": Aggregation("max", _fixed(aggregate_max), lambda alpha, _beta, _zeta: alpha),
    "mean": Aggregation("mean", _fixed(aggregate_mean)),
    "topk": Aggregation("topk:K", lambda k: aggregate_topk(int(k or 0))),
}
#: The registry's spellings for help texts: "paper (Eq. 5-6), max, mean or topk:K".
AGGREGATION_FORMS = (
    ", ".join(a.form for a in list(AGGREGATIONS.values())[:-1])
    + f" or {list(AGGREGATIONS.values())[-1].form}"
)


def aggregation(name: str) -> tuple[Aggregation, AggregateFn]:
    """The registry's entry for ``name`` (``topk:3``: ``topk`` with K = 3) and its rule;
    ConfigError for a name it does not know or a bad K."""
    key, sep, parameter = name.partition(":")
    entry = AGGREGATIONS.get(key)
    if entry is None or sep != (":" if entry.takes_parameter else ""):
        raise ConfigError(f"unknown aggregation {name!r}; expected one of {AGGREGATION_FORMS}")
    if not entry.takes_parameter:
        return entry, entry.build(None)
    if not re.fullmatch(r"\d+", parameter):
        raise ConfigError(f"unknown aggregation {name!r}; expected one of {AGGREGATION_FORMS}")
    if int(parameter) < 1:
        raise ConfigError(f"aggregation {name!r}: K must be >= 1")
    return entry, entry.build(int(parameter))


def mix(
    global_scores: torch.Tensor, local_scores: torch.Tensor, global_weight: float
) -> torch.Tensor:
    """``w * global + (1 - w) * local``; Eq. 7 is ``w = 0.5`` (bit for bit: halving is
    exact in floating point)."""
    if global_scores.shape != local_scores.shape:
        raise ValueError(
            f"global scores {tuple(global_scores.shape)} and local scores "
            f"{tuple(local_scores.shape)} differ in shape"
        )
    return global_weight * global_scores + (1.0 - global_weight) * local_scores


def class_bias(scores: torch.Tensor) -> torch.Tensor:
    """``(C,)``: per class, the mean top-1 score over the images whose top-1 it is; the
    mean of those for a class that is nobody's top-1."""
    if scores.dim() != 2 or scores.shape[0] == 0:
        raise ValueError(f"class bias needs (images, classes) scores; got {tuple(scores.shape)}")
    top, which = scores.max(dim=1)
    count = torch.bincount(which, minlength=scores.shape[1]).float()
    total = torch.zeros(scores.shape[1]).index_add_(0, which, top.float())
    seen = count > 0
    bias = torch.empty(scores.shape[1])
    bias[seen] = total[seen] / count[seen]
    bias[~seen] = bias[seen].mean()
    return bias


def debias(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``clip(scores * mean(bias) / bias, 0, 1)``, per class."""
    if bias.shape != scores.shape[-1:]:
        raise ValueError(f"bias {tuple(bias.shape)} does not match scores {tuple(scores.shape)}")
    if bool((bias <= 0).any()):
        raise ValueError("class bias must be positive")
    return (scores * (bias.mean() / bias)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class LabelRecipe:
    """How snippet and global scores become the initial pseudo label."""

    aggregation: str = PAPER
    zeta: float = DEFAULT_ZETA
    global_weight: float = DEFAULT_GLOBAL_WEIGHT
    debias: str = "none"

    def __post_init__(self) -> None:
        aggregation(self.aggregation)
        if not 0.0 <= self.zeta <= 1.0:
            raise ConfigError(f"--zeta must be within [0, 1], got {self.zeta}")
        if not 0.0 <= self.global_weight <= 1.0:
            raise ConfigError(f"--global-weight must be within [0, 1], got {self.global_weight}")
        if self.debias not in DEBIAS:
            raise ConfigError(f"--debias must be one of {', '.join(DEBIAS)}; got {self.debias!r}")

    def __str__(self) -> str:
        rule = f"paper(zeta={self.zeta:g})" if self.aggregation == PAPER else self.aggregation
        text = f"{rule} w={self.global_weight:g}"
        return text if self.debias == "none" else f"{text} debias={self.debias}"

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @property
    def needs_snippets(self) -> bool:
        """Whether the rule needs every snippet's scores (not only alpha and beta)."""
        return aggregation(self.aggregation)[0].from_alpha_beta is None

    def aggregate(self, snippets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Step 1 on ``(N, S, C)`` snippet scores."""
        return aggregation(self.aggregation)[1](snippets, valid, self.zeta)

    def aggregate_alpha_beta(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Step 1 from alpha and beta alone (``paper`` and ``max``)."""
        rule = aggregation(self.aggregation)[0].from_alpha_beta
        if rule is None:
            raise ConfigError(f"aggregation {self.aggregation!r} needs every snippet's scores")
        return rule(alpha, beta, self.zeta)

    def apply(
        self,
        global_scores: torch.Tensor,
        alpha: torch.Tensor | None = None,
        beta: torch.Tensor | None = None,
        snippets: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Steps 1 and 2 for ``(N, C)`` global scores: ``{"aggregate", "final"}``. A rule
        that alpha and beta (Eq. 5) are enough for reads them when given; otherwise the
        ``(N, S, C)`` snippet scores (with their mask). Step 3 is :meth:`bias`."""
        if alpha is not None and beta is not None and not self.needs_snippets:
            agg = self.aggregate_alpha_beta(alpha, beta)
        elif snippets is not None:
            agg = self.aggregate(snippets, valid)
        else:
            raise ConfigError(f"aggregation {self.aggregation!r} needs every snippet's scores")
        return {"aggregate": agg, "final": self.label(global_scores, agg)}

    def label(self, global_scores: torch.Tensor, aggregate_scores: torch.Tensor) -> torch.Tensor:
        """Step 2 (per image); step 3 needs the whole dataset: :meth:`bias`, :func:`debias`."""
        return mix(global_scores, aggregate_scores, self.global_weight)

    def bias(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Step 3's per-class bias over the whole dataset's labels, or None."""
        return class_bias(labels) if self.debias == "class-mean" and len(labels) else None


#: The CDUL paper's recipe: Eq. 5-6 with zeta 0.5, Eq. 7's even mix, no debiasing (also
#: what a run without a recorded recipe was labeled with).
PAPER_RECIPE = LabelRecipe()
#: What ``cdul label`` uses unless told otherwise, chosen by measurement on world seeds
#: (README "Hard labels"): the best snippet per class, a quarter weight on the global
#: score. Its pseudo labels rank better (mAP) and, at label-free thresholds, make better
#: labels (F1) than the paper's.
DEFAULT_RECIPE = LabelRecipe("max", global_weight=0.25)
#: ``cdul label --recipe NAME``: the named starting points the recipe flags change.
NAMED_RECIPES: dict[str, LabelRecipe] = {"default": DEFAULT_RECIPE, "paper": PAPER_RECIPE}

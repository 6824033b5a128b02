"""``cdul world``: write the embedded world, train (or reuse) its models, report on them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdul.core.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    gen = actions.add_parser("generate", help="write scenes in VOC layout to DIR")
    gen.add_argument("root", type=Path, help="output directory (created)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--train", type=int, default=2000, help="training scenes (default 2000)")
    gen.add_argument("--val", type=int, default=500, help="validation scenes (default 500)")
    gen.add_argument(
        "--format", choices=("voc", "wds"), default="voc",
        help="voc: VOC layout (default); wds: WebDataset tar shards of the same scenes",
    )  # fmt: skip
    gen.add_argument("--shard-size", type=int, default=100, help="samples per tar (wds)")

    models = actions.add_parser(
        "models", help="train or reuse the tiny CLIP and the backbone; print their paths"
    )
    models.add_argument("--seed", type=int, default=0)
    models.add_argument("--cache-dir", type=Path, default=None, help="default: $CDUL_CACHE_DIR")
    models.add_argument("--json", action="store_true", help="print paths as JSON")
    models.add_argument(
        "--ship", action="store_true",
        help="maintainers: train the default tiny CLIP (or take the one trained in the "
             "cache) and write its compact weights into the package, replacing the old",
    )  # fmt: skip

    report = actions.add_parser(
        "report", help="zero-shot top-1 and pseudo-label mAP per snippet spec and zeta"
    )
    report.add_argument("root", type=Path, help="a world written by 'cdul world generate'")
    report.add_argument("--split", default="val")
    report.add_argument("--seed", type=int, default=0)
    report.add_argument("--singles", type=int, default=500, help="held-out singles for top-1")
    report.add_argument(
        "--specs", nargs="+", default=None, help="default: grid:2x2 grid:3x3 patch:16 patch:32"
    )
    report.add_argument(
        "--zetas", nargs="+", type=float, default=None, help="default: 0 0.25 0.5 0.75"
    )
    report.add_argument("--cache-dir", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    return {"generate": _generate, "models": _models, "report": _report}[args.action](args)


def _generate(args: argparse.Namespace) -> int:
    from cdul.world.generator import write_voc_world

    if args.train < 0 or args.val < 0 or args.train + args.val == 0:
        raise ConfigError("--train and --val must be >= 0 and not both 0")
    if args.format == "wds":
        from cdul.world.generator import write_wds_world

        if args.shard_size < 1:
            raise ConfigError(f"--shard-size must be >= 1, got {args.shard_size}")
        root = write_wds_world(args.root, seed=args.seed, train=args.train, val=args.val,
                               shard_size=args.shard_size)  # fmt: skip
        last = max(0, (args.val + args.shard_size - 1) // args.shard_size - 1)
        spec = f"wds:{root}/val-{{00000..{last:05d}}}.tar"
        print(f"wrote {args.train} train + {args.val} val scenes to {root} as tar shards "
              f"({spec} --classes {root}/classes.txt)")  # fmt: skip
        return 0
    root = write_voc_world(args.root, seed=args.seed, train=args.train, val=args.val)
    print(f"wrote {args.train} train + {args.val} val scenes to {root} (voc:{root}:val)")
    return 0


def _models(args: argparse.Namespace) -> int:
    from cdul.world.backbone import BackboneRecipe, ensure_backbone
    from cdul.world.tiny_clip import MODEL_NAME, TinyClipRecipe, ensure_tiny_clip

    if args.ship:
        return _ship(args)
    clip = ensure_tiny_clip(TinyClipRecipe(seed=args.seed), args.cache_dir)
    backbone_recipe = BackboneRecipe(seed=args.seed)
    backbone = ensure_backbone(backbone_recipe, args.cache_dir)
    paths = {
        "clip_model": MODEL_NAME,
        "clip_pretrained": str(clip),
        "backbone_arch": backbone_recipe.arch,
        "backbone_weights": str(backbone),
    }
    if args.json:
        print(json.dumps(paths, indent=2))
    else:
        for key, value in paths.items():
            print(f"{key}: {value}")
    return 0


def _ship(args: argparse.Namespace) -> int:
    """Train the default recipe (or take the model this machine trained for it) and write
    its compact weights."""
    from cdul.core.weights import load_state_dict
    from cdul.world import cache, shipped
    from cdul.world.tiny_clip import (
        TinyClipRecipe,
        checkpoint_path,
        initial_token_embedding,
        train_tiny_clip,
    )

    if args.seed != 0:
        raise ConfigError("--ship writes the default recipe's weights (seed 0) only")
    recipe = TinyClipRecipe()
    trained = checkpoint_path(recipe, args.cache_dir)
    summary = cache.load_summary(trained)
    if summary is not None and "source" not in summary:  # trained here, not expanded
        state = load_state_dict(trained, "the cached tiny CLIP")
    else:
        state, summary = train_tiny_clip(recipe)
    target = shipped.shipped_path(recipe.key())
    for old in shipped.SHIPPED_DIR.glob("tiny-clip-*.pt"):
        old.unlink()
    initial = initial_token_embedding(recipe.seed)  # built once: a whole model's init
    shipped.write(target, state, summary, initial)
    # The cache holds what every other checkout expands, not the float32 original.
    state, summary = shipped.read(target, lambda: initial)
    cache.save_atomic(state, checkpoint_path(recipe, args.cache_dir), summary)
    size = target.stat().st_size / 1e6
    print(f"wrote {target} ({size:.1f} MB; final loss {summary['final_loss_ema']:.3f})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from cdul.core.clip_models import create_clip
    from cdul.core.clip_scoring import ClipScorer
    from cdul.core.datasets import open_dataset
    from cdul.world import report
    from cdul.world.tiny_clip import MODEL_NAME, TinyClipRecipe, ensure_tiny_clip

    dataset = open_dataset(f"voc:{args.root}:{args.split}")
    checkpoint = ensure_tiny_clip(TinyClipRecipe(seed=args.seed), args.cache_dir)
    scorer = ClipScorer(create_clip(MODEL_NAME, str(checkpoint)))
    top1 = report.zero_shot_top1(scorer, args.seed, args.singles)
    results = report.pseudo_label_maps(
        scorer, dataset, args.specs or report.DEFAULT_SPECS, args.zetas or report.DEFAULT_ZETAS
    )
    print(report.format_report(top1, args.singles, len(dataset), results))
    return 0

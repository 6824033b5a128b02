"""The overhead of gradient alignment: an aligned training step against a plain one (P4).

Both use the trainer's own step (:func:`cdul.trainer.loop.train_step`: forward, Bernoulli
KL, backward, Adam) on the same batches of world scenes, measured side by side in one
run, alternating plain / aligned so that machine load hits both alike:

- plain:   the step on fixed pseudo labels;
- aligned: the step on labels read from the latents (``sigmoid(latent[idx])``), then what
           the trainer adds per step: the logits kept for the epoch-end update, and the
           Eq. 8 update itself (``align_latent``) for this batch's rows, written back
           (F = 1, i.e. every step pays the update).

The README's P4 figure: median plain step time / median aligned step time (goal >= 0.95).
``--results FILE.csv`` writes one row per step kind (column ``mode``): its median step
time and plain / mode (P4 on the aligned row).

    .venv/bin/python benchmarks/alignment_step_overhead.py --arch resnet18 --image-size 128
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from results_file import add_results_option, write_results

from cdul.core.classifier import build_classifier
from cdul.core.method.alignment import align_latent, from_latent, to_latent
from cdul.core.transforms import eval_transform
from cdul.trainer.loop import train_step
from cdul.world.generator import make_scene
from cdul.world.shapes import SHAPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=64, help="distinct images cycled through")
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_results_option(parser)
    args = parser.parse_args()

    device = torch.device(args.device)
    amp = device.type == "cuda"
    torch.manual_seed(0)
    transform = eval_transform(args.image_size)
    pixels = torch.stack([transform(make_scene(4, i).image) for i in range(args.images)])
    classes = len(SHAPES)
    labels = torch.rand(args.images, classes, generator=torch.Generator().manual_seed(0))
    latent = to_latent(labels)
    model = build_classifier(args.arch, classes).to(device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    model.train()

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(step * args.batch_size, (step + 1) * args.batch_size) % args.images
        x = pixels[index].to(device)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        return index, x

    def plain(step: int) -> None:
        index, x = batch(step)
        train_step(model, optimiser, scaler, x, labels[index].to(device), amp)

    kept: list[torch.Tensor] = []

    def aligned(step: int) -> None:
        nonlocal latent
        index, x = batch(step)
        targets = from_latent(latent[index]).to(device)
        _, logits = train_step(model, optimiser, scaler, x, targets, amp)
        kept.append(logits.float())
        latent[index] = align_latent(latent[index], logits.float().cpu(), step_size=1.0)

    def timed(fn, step: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for step in range(args.warmup):
        plain(step), aligned(step)
    times: dict[str, list[float]] = {"plain": [], "aligned": []}
    for step in range(args.steps):
        order = (("plain", plain), ("aligned", aligned))
        for name, fn in order if step % 2 == 0 else reversed(order):
            times[name].append(timed(fn, step))
    p, a = statistics.median(times["plain"]), statistics.median(times["aligned"])
    print(
        f"device {device}, {args.arch}, {args.image_size} px, batch {args.batch_size}, "
        f"{args.steps} steps each (threads {torch.get_num_threads()})"
    )
    print(f"plain step   median {p * 1000:8.1f} ms")
    print(f"aligned step median {a * 1000:8.1f} ms")
    print(f"P4 = plain / aligned = {p / a:.3f}  (goal >= 0.95)")
    settings = {"device": str(device), "arch": args.arch, "image_size": args.image_size,
                "batch_size": args.batch_size, "steps": args.steps,
                "threads": torch.get_num_threads()}  # fmt: skip
    modes = (("plain", p), ("aligned", a))
    rows = [{**settings, "mode": name, "median_step_ms": round(t * 1000, 2),
             "plain_over_mode": round(p / t, 3)} for name, t in modes]  # fmt: skip
    write_results(args.results, rows)


if __name__ == "__main__":
    main()

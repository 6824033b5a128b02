"""label-gallery and label-report on small runs built with the pseudo-label API: the
per-class numbers against hand-worked values, the pages' content (escaping, relative
links only, ground-truth marks, placeholders) and the pages in a real headless browser
where chromium is installed."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.browser import probe, require_chromium, screenshot

from cdul import cli
from cdul.core.datasets import open_dataset
from cdul.core.evaluation import evaluate, format_ap
from cdul.core.pseudo_labels import VECTORS, LabelManifest, to_table, write_shard
from cdul.core.storage import open_store
from cdul.labels.gallery.command import write_gallery
from cdul.labels.gallery.model import GalleryConfig
from cdul.labels.merge import merge_run
from cdul.labels.queue import QueueConfig, write_queue
from cdul.labels.report import format_rows, rows_for
from cdul.labels.stats import FIRES_ON_ALMOST_ALL, NEVER_FIRES, class_stats

NAME = 'a<b&"c"'  # every character HTML must escape
CLASSES = [NAME, "dog", "cat"]
IDS = ["p0.png", "p1.png", "p2.png", "p3.png"]
# Hand-chosen: none lands on a histogram bin's edge (x 10 is never a whole number), and at
# the threshold 0.5 the first class fires on 3 of 4 images, dog on none, cat on all.
FINAL = torch.tensor(
    [[0.95, 0.15, 0.65], [0.75, 0.25, 0.95], [0.35, 0.05, 0.85], [0.55, 0.45, 0.55]]
)
ESCAPED = "a&lt;b&amp;&quot;c&quot;"


def build_run(uri: str, spec: str, ids, classes, final, truth=None) -> str:
    """A merged one-shard run at ``uri`` (evaluated with ``truth``); returns ``uri``.
    ``global`` is half of ``final``: below 0.5 everywhere, for the --vector checks."""
    manifest = LabelManifest(
        dataset=spec, classes=list(classes), template="a photo of a {}",
        clip_model="cdul-tiny-rn", clip_pretrained="/models/tiny-clip.pt",
        snippet_spec="grid:3x3", zeta=0.5, num_shards=1, code_version="test",
        created="2026-01-02T03:04:05+00:00", shard_index=0,
    )  # fmt: skip
    vectors = {name: final for name in VECTORS} | {"global": final / 2}
    store = open_store(uri)
    write_shard(store, manifest, to_table(list(ids), vectors, truth))
    merge_run(store)
    return uri


def write_images(folder: Path, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, image_id in enumerate(ids):
        colour = (40 * k % 256, 90, 200 - 30 * k % 200)
        Image.new("RGB", (64 + 8 * k, 48), colour).save(folder / image_id)


@pytest.fixture
def folder_run(tmp_path) -> dict:
    """FINAL on four folder images (no ground truth)."""
    write_images(tmp_path / "images", IDS)
    spec = f"folder:{tmp_path / 'images'}"
    uri = build_run((tmp_path / "run").as_uri(), spec, IDS, CLASSES, FINAL)
    return {"uri": uri, "images": tmp_path / "images", "tmp": tmp_path}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from cdul.world.generator import write_voc_world

    return write_voc_world(tmp_path_factory.mktemp("gallery-world"), seed=3, train=1, val=40,
                           progress=False)  # fmt: skip


@pytest.fixture
def truth_run(tmp_path, small_world) -> dict:
    """Scores that follow the world's ground truth loosely (AP < 1, errors both ways)."""
    dataset = open_dataset(f"voc:{small_world}:val")
    truth = dataset.ground_truth_matrix()
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    final = 0.4 * truth + 0.6 * noise
    uri = build_run((tmp_path / "truth-run").as_uri(), dataset.spec, dataset.ids(),
                    dataset.classes, final, truth)  # fmt: skip
    return {"uri": uri, "ids": dataset.ids(), "classes": list(dataset.classes),
            "final": final, "truth": truth, "tmp": tmp_path}  # fmt: skip


def gallery(uri: str, out: Path, *flags: str) -> str:
    assert cli.main(["label-gallery", uri, "-o", str(out), *flags]) == 0
    return (out / "index.html").read_text(encoding="utf-8")


def links(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def assert_self_contained(folder: Path) -> None:
    """Every link relative and present; no script, no external resource of any kind."""
    for page in folder.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text and "@import" not in text and "url(" not in text
        assert not re.search(r"\b(?:https?|ftp|file|s3)://[^\s<]*\"", text), page
        for link in links(text):
            assert ":" not in link and not link.startswith("/"), (page, link)
            assert (folder / link).is_file(), (page, link)


# -- the numbers ---------------------------------------------------------------------------


def test_class_stats_match_hand_worked_values():
    a, dog, cat = class_stats(FINAL, CLASSES, torch.full((3,), 0.5), 0.9)
    assert (a.fires, a.share, a.flag, a.threshold) == (3, 0.75, None, 0.5)
    assert a.mean == pytest.approx(0.65)
    # sorted 0.35 0.55 0.75 0.95: q1 at position 0.75 -> 0.35 + 0.75 * 0.2 = 0.5
    assert a.quartiles == pytest.approx((0.35, 0.5, 0.65, 0.8, 0.95))
    assert a.histogram == (0, 0, 0, 1, 0, 1, 0, 1, 0, 1)
    assert a.falloff[0] == pytest.approx(0.95) and a.falloff[-1] == pytest.approx(0.35)
    assert (dog.fires, dog.flag, dog.histogram) == (0, NEVER_FIRES, (1, 1, 1, 0, 1, 0, 0, 0, 0, 0))
    assert dog.mean == pytest.approx(0.225)
    assert (cat.fires, cat.share, cat.flag) == (4, 1.0, FIRES_ON_ALMOST_ALL)
    assert cat.quartiles == pytest.approx((0.55, 0.625, 0.75, 0.875, 0.95))
    # A score equal to the threshold fires; 3 of 4 is not "almost everything".
    a, dog, cat = class_stats(FINAL, CLASSES, torch.full((3,), 0.55), 0.9)
    assert (a.fires, dog.fires, cat.fires, cat.flag) == (3, 0, 4, FIRES_ON_ALMOST_ALL)
    a, dog, cat = class_stats(FINAL, CLASSES, torch.tensor([0.6, 0.6, 0.6]), 0.9)
    assert (a.fires, cat.fires, cat.flag) == (2, 3, None)
    a, dog, cat = class_stats(FINAL, CLASSES, torch.tensor([0.6, math.inf, 0.6]), 0.9)
    assert (dog.fires, dog.flag) == (0, NEVER_FIRES)


def report_rows(text: str) -> dict[str, list[str]]:
    """Class -> [fires, share, mean, min, q1, median, q3, max, histogram, flag]."""
    rows = {}
    for line in text.splitlines():
        for name in CLASSES:
            if line.startswith(name + " "):
                numbers, histogram, flag = line.split("|")
                rows[name] = [*numbers.split()[-8:], histogram, flag.strip()]
    return rows


def test_report_without_ground_truth_prints_hand_worked_numbers(folder_run, capsys):
    # By default each class at the run's label-free threshold, Otsu's, by hand:
    #   a<b  0.35 0.55 | 0.75 0.95  (1/4) (0.45 - 0.85)^2 = 0.04 beats 0.03 either side
    #   dog  0.05 0.15 0.25 | 0.45  (3/16) (0.15 - 0.45)^2 = 0.0169 beats 0.0156, 0.0102
    #   cat  0.55 0.65 | 0.85 0.95  (1/4) (0.6 - 0.9)^2 = 0.0225 beats 0.0133 either side
    assert cli.main(["label-report", folder_run["uri"]]) == 0
    out = capsys.readouterr().out
    assert "a class fires at >= its threshold (the run's label-free (otsu))" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert [lines[c][1:3] for c in ("a<b&\"c\"", "dog", "cat")] == [
        ["0.750", "2"], ["0.450", "1"], ["0.850", "2"]
    ]  # fmt: skip
    assert "1.25 labels per image" in out and "0 class(es) flagged" in out  # 5 on 4 images
    # At one threshold, 0.5: the numbers worked out at the top of this file.
    assert cli.main(["label-report", folder_run["uri"], "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "no ground truth" in out and "snippets " not in out  # no row of dashes
    rows = report_rows(out)
    assert rows[NAME] == ["3", "75.0%", "0.650", "0.350", "0.500", "0.650", "0.800", "0.950",
                          "   █ █ █ █", ""]  # fmt: skip
    assert rows["dog"][:2] == ["0", "0.0%"] and rows["dog"][8] == "███ █     "
    assert rows["dog"][9] == "never fires: a sign of a bad class name or template"
    assert rows["cat"][:3] == ["4", "100.0%", "0.750"] and rows["cat"][8] == "     ██ ██"
    assert rows["cat"][9] == (
        "fires on almost everything (> 90% of images): a sign of a bad class name or template"
    )
    assert "2 class(es) flagged" in out
    assert cli.main(["label-report", folder_run["uri"], "--threshold", "0.6"]) == 0
    rows = report_rows(capsys.readouterr().out)
    assert (rows[NAME][:2], rows["cat"][:2], rows["cat"][9]) == (["2", "50.0%"], ["3", "75.0%"], "")
    # global is FINAL / 2 here: nothing reaches 0.5.
    assert cli.main(["label-report", folder_run["uri"], "--vector", "global",
                     "--threshold", "0.5"]) == 0  # fmt: skip
    rows = report_rows(capsys.readouterr().out)
    assert all(row[0] == "0" and row[9].startswith(NEVER_FIRES) for row in rows.values())


def test_report_keeps_the_map_table_for_runs_with_ground_truth(truth_run, folder_run, capsys):
    assert cli.main(["label-report", truth_run["uri"]]) == 0
    assert capsys.readouterr().out == format_rows(rows_for([truth_run["uri"]])) + "\n"
    assert cli.main(["label-report", truth_run["uri"], folder_run["uri"]]) == 0
    out = capsys.readouterr().out
    table, block = out.split("\n\n")
    expected = evaluate(truth_run["final"], truth_run["truth"], truth_run["classes"]).mean_ap
    assert f"{100 * expected:.1f}" in table and truth_run["uri"] in table
    assert folder_run["uri"] not in table and block.startswith(folder_run["uri"])


# -- the pages -----------------------------------------------------------------------------


def test_gallery_without_ground_truth(folder_run, capsys):
    # p3 was labeled, then damaged: it must get a placeholder and a note, not a crash.
    (folder_run["images"] / "p3.png").write_bytes(b"not an image any more")
    out = folder_run["tmp"] / "gallery"
    index = gallery(folder_run["uri"], out, "--threshold", "0.5")
    assert "1 image(s) could not be read" in capsys.readouterr().out
    pages = sorted(p.name for p in out.glob("*.html"))
    assert pages == [
        "class-000.html",
        "class-001.html",
        "class-002.html",
        "index.html",
        "review.html",
    ]
    assert NAME not in index and index.count(ESCAPED) >= 3
    assert "no ground truth" in index and "Worst false" not in index and "AP" not in index
    # The summary: the run's settings.
    for text in (
        "grid:3x3",
        "cdul-tiny-rn (tiny-clip.pt)",
        "a photo of a {}",
        "<td>recipe</td>",
        "paper(zeta=0.5) w=0.5",
    ):
        assert text in index
    # The hand-worked numbers, the flags, the sorted-score plots (one per class).
    assert ("3 of 4 at or over its threshold 0.5 (75.0%); mean 0.650, quartiles 0.500 / 0.650 / "
            "0.800") in index  # fmt: skip
    assert "never fires: a sign of a bad class name or template" in index
    assert "fires on almost everything (&gt; 90% of images)" in index
    assert index.count("<polyline") == 3
    # Thumbnails: one per readable image shown, none for p3, which gets a placeholder.
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == [f"{r:07d}.jpg" for r in range(3)]
    assert "image could not be read" in index and "p3.png" in index
    # Each image with its top labels (here p1: cat 0.95, then the first class 0.75).
    cat_page = (out / "class-002.html").read_text(encoding="utf-8")
    p1 = cat_page[cat_page.index(">p1.png<") :].split("</figure>")[0]
    assert re.findall(r"<li>(.*?)</li>", p1) == ["cat 0.95", f"{ESCAPED} 0.75", "dog 0.25"]
    assert_self_contained(out)


def test_gallery_with_ground_truth_shows_ap_and_errors(truth_run):
    out = truth_run["tmp"] / "gallery"
    index = gallery(truth_run["uri"], out, "--per-class", "5", "--errors", "3")
    final, truth, ids = truth_run["final"], truth_run["truth"], truth_run["ids"]
    result = evaluate(final, truth, truth_run["classes"])
    assert f"{format_ap(result.mean_ap)} (final)" in index
    for c, name in enumerate(truth_run["classes"]):
        row = index.split(f'href="class-{c:03d}.html">{name}</a></td>')[1].split("</tr>")[0]
        assert (
            f"<td>{format_ap(result.per_class[name])}</td><td>{result.positives[name]}</td>" in row
        )
        page = (out / f"class-{c:03d}.html").read_text(encoding="utf-8")
        top, fps, fns = page.split("<h2>")[1:4]
        assert fps.startswith("Worst false positives") and fns.startswith("Worst false negatives")
        shown = lambda part: re.findall(r'<div class="id">(.*?)</div>', part)  # noqa: E731
        order = sorted(range(len(ids)), key=lambda r: -float(final[r, c]))
        assert shown(top) == [ids[r] for r in order[:5]]
        assert shown(fps) == [ids[r] for r in order if truth[r, c] == 0][:3]
        assert shown(fns) == [ids[r] for r in reversed(order) if truth[r, c] == 1][:3]
        assert fps.count('<figure class="neg"') == 3 and 'class="pos"' not in fps
        assert fns.count('<figure class="pos"') == 3 and 'class="neg"' not in fns
    assert_self_contained(out)


def test_review_first_page_is_the_queue(truth_run):
    out = truth_run["tmp"] / "gallery"
    index = gallery(truth_run["uri"], out, "--review", "4")
    assert 'href="review.html">Review first: the 4 labels most likely wrong</a>' in index
    page = (out / "review.html").read_text(encoding="utf-8")
    _, rows, _ = write_queue(QueueConfig(run=truth_run["uri"], top=4,
                                         output=str(truth_run["tmp"] / "q.csv")))  # fmt: skip
    shown = re.findall(r'<div class="id">(.*?)</div>.*?<b>(.*?)</b>: (labeled|not labeled)', page)
    assert shown == [(r[1], r[2], "labeled" if r[3] else "not labeled") for r in rows]
    truth, ids, classes = truth_run["truth"], truth_run["ids"], truth_run["classes"]
    wrong = [bool(truth[ids.index(r[1]), classes.index(r[2])]) != bool(r[3]) for r in rows]
    assert page.count('<span class="bad">wrong</span>') == sum(wrong)
    assert_self_contained(out)
    gallery(truth_run["uri"], out, "--review", "0")
    assert "review.html" not in (out / "index.html").read_text()


def test_gallery_of_moved_images_uses_placeholders_then_images(folder_run, capsys):
    moved = folder_run["tmp"] / "moved"
    shutil.move(folder_run["images"], moved)
    out = folder_run["tmp"] / "gallery"
    index = gallery(folder_run["uri"], out)
    assert "could not be opened" in index and "give --images SPEC" in capsys.readouterr().out
    assert "<img" not in index and not list((out / "thumbs").iterdir())
    index = gallery(folder_run["uri"], out, "--images", f"folder:{moved}")
    assert index.count("<img") == 3 * 4  # each class's strip: all four images
    assert len(list((out / "thumbs").iterdir())) == 4
    assert "could not be" not in index


def test_gallery_of_a_run_and_images_on_s3(s3_env, tmp_path):
    images = open_store(f"{s3_env}/images")
    for k, image_id in enumerate(IDS):
        buffer = io.BytesIO()
        Image.new("RGB", (50, 40), (60 * k, 120, 30)).save(buffer, format="PNG")
        images.write_bytes(image_id, buffer.getvalue())
    uri = build_run(f"{s3_env}/run", f"{s3_env}/images", IDS, CLASSES, FINAL)
    index = gallery(uri, tmp_path / "g")
    assert index.count("<img") == 3 * 4 and "could not be" not in index
    assert len(list((tmp_path / "g" / "thumbs").iterdir())) == 4
    assert_self_contained(tmp_path / "g")


def test_many_images_keep_pages_small(tmp_path):
    n, per_class, errors = 400, 6, 2
    ids = [f"img{k:04d}.png" for k in range(n)]
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id in ids:
        Image.new("RGB", (32, 32), (9, 99, 199)).save(folder / image_id)
    g = torch.Generator().manual_seed(1)
    truth = (torch.rand(n, 3, generator=g) < 0.2).float()
    final = 0.5 * truth + 0.5 * torch.rand(n, 3, generator=g)
    uri = build_run((tmp_path / "run").as_uri(), f"folder:{folder}", ids, CLASSES, final, truth)
    config = GalleryConfig(run=uri, output=tmp_path / "g", per_class=per_class, errors=errors,
                           review=10)  # fmt: skip
    result, pages = write_gallery(config)
    shown = {r for v in result.classes for r in (*v.top, *v.false_positives, *v.false_negatives)}
    shown |= {pair.row for pair in result.review}
    assert len(result.thumbs) == len(shown) <= 3 * (per_class + 2 * errors) + 10
    assert len(list((tmp_path / "g" / "thumbs").iterdir())) == len(shown)
    assert [p.name for p in pages] == ["index.html", *(f"class-{c:03d}.html" for c in range(3)),
                                       "review.html"]  # fmt: skip
    for page in pages[1:4]:
        assert page.read_text().count("<figure") == per_class + 2 * errors
    assert pages[4].read_text().count("<figure") == 10
    assert pages[0].stat().st_size < 40_000


def test_bad_flags_are_one_line_errors(folder_run, capsys):
    out = str(folder_run["tmp"] / "g")
    assert cli.main(["label-gallery", folder_run["uri"], "-o", out, "--per-class", "0"]) == 2
    assert "--per-class must be in 1..1000, got 0" in capsys.readouterr().err
    assert cli.main(["label-report", folder_run["uri"], "--threshold", "2"]) == 2
    assert "--threshold must be within [0, 1], got 2.0" in capsys.readouterr().err


# -- in a real browser ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder_run", "truth_run"])
def test_pages_render_in_a_real_browser(kind, request, tmp_path):
    require_chromium()
    run = request.getfixturevalue(kind)
    out = tmp_path / "gallery"
    gallery(run["uri"], out)
    shots = Path(os.environ.get("CDUL_GALLERY_SHOTS", tmp_path))  # where a person can look
    shots.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / "profile"
    for page in ("index.html", "class-000.html", "review.html"):
        screenshot(out / page, shots / f"{kind}-{page}.png", profile)
        seen = probe(out / page, profile)
        assert seen["images"] > 0 and seen["loaded"] == seen["images"], seen["broken"]
        assert seen["svgs"] >= (0 if page == "review.html" else 2)  # no plots on that one
        assert seen["figures"] >= seen["images"]
        assert seen["scrollWidth"] <= seen["clientWidth"], "the page scrolls sideways at 1280 px"

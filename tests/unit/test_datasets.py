"""cdul.core.datasets: VOC, COCO and folder readers, bad-item handling, spec parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_datasets import (
    BROKEN_VOC,
    COCO_CLASSES,
    CORRUPT_VOC_ID,
    FOLDER_IDS,
    VOC_IDS,
    coco_document,
    write_coco,
    write_folder,
    write_voc,
)

from cdul.core.datasets import (
    SPEC_FORMS,
    VOC_CLASSES,
    CocoDataset,
    Dataset,
    FolderDataset,
    Sample,
    VocDataset,
    open_dataset,
)
from cdul.core.errors import ConfigError, DatasetError


def positives(dataset: Dataset, i: int) -> set[str]:
    row = dataset.ground_truth(i)
    assert row is not None and row.dtype == torch.float32 and row.shape == (len(dataset.classes),)
    return {dataset.classes[k] for k in torch.nonzero(row).flatten().tolist()}


# -- VOC ------------------------------------------------------------------------------


@pytest.fixture
def voc_root(tmp_path):
    return write_voc(tmp_path / "VOC")


def test_voc_ground_truth_counts_occluded_and_truncated_excludes_difficult(voc_root) -> None:
    dataset = VocDataset(voc_root)
    assert dataset.classes == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert dataset.ids() == VOC_IDS and len(dataset) == 6
    assert dataset.has_ground_truth
    assert positives(dataset, 0) == {"person", "dog"}  # occluded + truncated
    assert positives(dataset, 1) == {"car"}  # difficult-only cat left out
    assert [positives(dataset, i) for i in (2, 3, 4)] == [{"bird"}, {"sheep"}, {"boat"}]
    # Ground truth never decodes: the corrupt image's labels are still readable.
    assert positives(dataset, 5) == {"cow"}
    matrix = dataset.ground_truth_matrix()
    assert matrix is not None and matrix.shape == (6, 20) and matrix.dtype == torch.float32
    assert matrix.sum().item() == 7


def test_voc_difficult_include(voc_root) -> None:
    dataset = VocDataset(voc_root, difficult="include")
    assert positives(dataset, 1) == {"cat", "car"}
    with pytest.raises(ConfigError, match="exclude, include"):
        VocDataset(voc_root, difficult="ignore")


def test_voc_load_decodes_every_kind_of_image(voc_root) -> None:
    dataset = VocDataset(voc_root)
    samples = {dataset.ids()[i]: dataset.load(i) for i in range(5)}
    for sample in samples.values():
        assert isinstance(sample, Sample) and sample.image.mode == "RGB"
    png = samples["2008_000003"]
    assert png.path.endswith("2008_000003.png") and png.image.size == (20, 10)
    gray = np.asarray(samples["2008_000004"].image)  # no <filename>: <id>.jpg
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert samples["2008_000005"].image.size == (20, 40)  # EXIF orientation 6
    assert torch.equal(samples["2008_000001"].labels, dataset.ground_truth(0))
    assert dataset.load(-2).image_id == "2008_000005"  # negative indices, like a list
    with pytest.raises(IndexError):
        dataset.load(6)


def test_voc_corrupt_image_raises_naming_the_file(voc_root) -> None:
    dataset = VocDataset(voc_root)
    with pytest.raises(DatasetError, match=f"{CORRUPT_VOC_ID}.jpg"):
        list(dataset)
    with pytest.raises(DatasetError, match=f"{CORRUPT_VOC_ID}.jpg"):
        dataset.load(5)


def test_voc_skip_bad_skips_and_reports(voc_root) -> None:
    dataset = VocDataset(voc_root, skip_bad=True)
    ids = [sample.image_id for sample in dataset]
    assert ids == VOC_IDS[:5]
    list(dataset)  # a second pass must not report the item twice
    assert len(dataset.skipped) == 1
    image_id, path, reason = dataset.skipped[0]
    assert image_id == CORRUPT_VOC_ID and path.endswith(f"{CORRUPT_VOC_ID}.jpg")
    assert "not a JPEG, PNG, WebP or BMP image" in reason
    report = dataset.skip_report()
    assert "1 item(s) skipped" in report and CORRUPT_VOC_ID in report
    with pytest.raises(DatasetError):
        dataset.load(5)  # direct access still raises


@pytest.mark.parametrize("split", sorted(BROKEN_VOC))
def test_voc_broken_annotation(voc_root, split: str) -> None:
    problem = BROKEN_VOC[split][1]
    with pytest.raises(DatasetError) as caught:
        VocDataset(voc_root, split)
    assert f"bad_{split}.xml" in str(caught.value) and problem in str(caught.value)
    dataset = VocDataset(voc_root, split, skip_bad=True)
    assert dataset.ids() == ["2008_000001"]
    assert dataset.ground_truth_matrix().shape == (1, 20)
    assert [item.image_id for item in dataset.skipped] == [f"bad_{split}"]
    assert problem in dataset.skip_report()


def test_voc_split_problems(voc_root) -> None:
    with pytest.raises(DatasetError, match=r"2008_999999\.xml: annotation missing"):
        VocDataset(voc_root, "noann")
    assert VocDataset(voc_root, "noann", skip_bad=True).ids() == ["2008_000001"]
    with pytest.raises(DatasetError, match="listed twice"):
        VocDataset(voc_root, "twice")
    assert VocDataset(voc_root, "twice", skip_bad=True).ids() == ["2008_000001", "2008_000002"]
    with pytest.raises(ConfigError, match=r"splits found: .*val") as caught:
        VocDataset(voc_root, "test")
    assert "person_val" not in str(caught.value)
    with pytest.raises(ConfigError, match="plain name"):
        VocDataset(voc_root, "../val")


def test_voc_classes_file_overrides(tmp_path) -> None:
    root = write_voc(tmp_path / "custom", classes=["dog", "person", "car", "cat"])
    dataset = VocDataset(root, "twice", skip_bad=True, difficult="include")
    assert dataset.classes == ("dog", "person", "car", "cat")
    assert dataset.ground_truth_matrix().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]
    with pytest.raises(DatasetError, match=r"'bird', which is not one of the 4 classes\.txt"):
        VocDataset(root)  # item 3 is a bird
    (root / "classes.txt").write_text("cat\ncat\n")
    with pytest.raises(DatasetError, match="repeats cat"):
        VocDataset(root, "twice")


# -- COCO -----------------------------------------------------------------------------


def test_coco_labels(tmp_path) -> None:
    annotations, images = write_coco(tmp_path)
    dataset = CocoDataset(annotations, images)
    assert dataset.classes == COCO_CLASSES  # ordered by category id 1, 3, 7
    assert dataset.ids() == ["42", "7", "100"]
    assert dataset.ground_truth_matrix().tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    samples = list(dataset)
    assert [s.image.size for s in samples] == [(32, 24), (20, 10), (32, 24)]
    assert samples[1].path.endswith("sub/000007.png")


def test_coco_without_annotations_has_no_ground_truth(tmp_path) -> None:
    document = coco_document()
    del document["annotations"]
    dataset = CocoDataset(*write_coco(tmp_path, document))
    assert not dataset.has_ground_truth
    assert dataset.ground_truth(0) is None and dataset.ground_truth_matrix() is None
    assert dataset.load(0).labels is None


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: "{not json", "malformed JSON"),
        (lambda d: "[]", "JSON object at the top level"),
        (lambda d: {k: v for k, v in d.items() if k != "images"}, "'images' is missing"),
        (lambda d: {**d, "categories": [{"id": 1}]}, "no usable 'name'"),
        (lambda d: {**d, "annotations": [{"image_id": 42}]}, "no usable 'category_id'"),
        (lambda d: {**d, "annotations": [{"image_id": 5, "category_id": 1}]}, "image id 5"),
    ],
)
def test_coco_malformed_file(tmp_path, mutate, problem: str) -> None:
    annotations, images = write_coco(tmp_path, mutate(coco_document()))
    with pytest.raises(DatasetError) as caught:
        CocoDataset(annotations, images, skip_bad=True)  # structural: even with skip_bad
    assert str(annotations) in str(caught.value) and problem in str(caught.value)


def test_coco_bad_image_entries_can_be_skipped(tmp_path) -> None:
    document = coco_document()
    document["annotations"].append({"image_id": 7, "category_id": 99})
    document["images"].append({"id": 5})
    document["images"].append({"id": 42, "file_name": "again.jpg"})
    annotations, images = write_coco(tmp_path, document)
    with pytest.raises(DatasetError, match=r"images\[3\] \(id 5\) has no 'file_name'"):
        CocoDataset(annotations, images)
    dataset = CocoDataset(annotations, images, skip_bad=True)
    assert dataset.ids() == ["42", "100"]
    assert dataset.ground_truth_matrix().tolist() == [[1, 0, 1], [0, 0, 0]]
    reasons = " | ".join(item.reason for item in dataset.skipped)
    assert "no 'file_name'" in reasons and "repeats image id 42" in reasons
    assert "category_id 99" in reasons


# -- folder ---------------------------------------------------------------------------


def test_folder_finds_images_sorted_and_ignores_the_rest(tmp_path) -> None:
    dataset = FolderDataset(write_folder(tmp_path / "photos"))
    assert dataset.ids() == FOLDER_IDS
    assert dataset.classes == () and not dataset.has_ground_truth
    assert dataset.ground_truth_matrix() is None
    samples = list(dataset)
    assert [s.image_id for s in samples] == FOLDER_IDS
    assert all(s.image.mode == "RGB" and s.labels is None for s in samples)
    by_id = {s.image_id: np.asarray(s.image) for s in samples}
    assert tuple(by_id["b.Png"][0, 1]) == (255, 255, 255)  # transparent -> white
    assert by_id["cmyk.jpeg"][4, 4, 1] < 60  # magenta, not garbage
    assert by_id["gray16.png"][0, :, 0].tolist() == [0, 100, 255]


def test_folder_classes_and_empty(tmp_path) -> None:
    root = write_folder(tmp_path / "photos")
    assert FolderDataset(root, classes=["cat", "dog"]).classes == ("cat", "dog")
    with pytest.raises(ConfigError, match="sequence of names"):
        FolderDataset(root, classes="cat")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="holds no images"):
        FolderDataset(tmp_path / "empty")


# -- specs ----------------------------------------------------------------------------


def test_open_dataset_specs(tmp_path) -> None:
    voc = write_voc(tmp_path / "VOC")
    annotations, images = write_coco(tmp_path / "coco")
    photos = write_folder(tmp_path / "with:colon")
    assert isinstance(open_dataset(f"voc:{voc}"), VocDataset)
    assert open_dataset(f"voc:{voc}:twice", skip_bad=True).ids() == ["2008_000001", "2008_000002"]
    coco = open_dataset(f"coco:{annotations}:{images}")
    assert isinstance(coco, CocoDataset) and len(coco) == 3
    folder = open_dataset(f"folder:{photos}", classes=("a",))
    assert isinstance(folder, FolderDataset) and folder.classes == ("a",)
    for dataset in (open_dataset(f"voc:{voc}", difficult="include"), coco, folder):
        assert type(open_dataset(dataset.spec)) is type(dataset)
        assert open_dataset(dataset.spec).ids() == dataset.ids()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "expected KIND:"),
        ("/data/VOC2012", "expected KIND:"),
        ("vox:/data", "unknown kind 'vox'"),
        ("voc:", "VOC ROOT is empty"),
        ("voc:/nonexistent/VOC", "'/nonexistent/VOC' is not an existing directory"),
        ("voc:{voc}:val:extra", "at most ROOT and SPLIT"),
        ("voc:{voc}:", "SPLIT is empty"),
        ("coco:{json}", "needs ANNOTATIONS_JSON and IMAGES_DIR"),
        ("coco:/missing.json:{images}", "'/missing.json' is not an existing file"),
        ("coco:{json}:/missing", "IMAGES_DIR '/missing'"),
        ("folder:", "PATH is empty"),
        ("folder:/nonexistent", "not an existing directory"),
    ],
)
def test_bad_specs(tmp_path, spec: str, problem: str) -> None:
    voc = write_voc(tmp_path / "VOC")
    annotations, images = write_coco(tmp_path / "coco")
    spec = spec.format(voc=voc, json=annotations, images=images)
    with pytest.raises(ConfigError) as caught:
        open_dataset(spec)
    message = str(caught.value)
    assert problem in message
    assert all(form in message for form in SPEC_FORMS)
    assert isinstance(caught.value, ValueError)


def test_unknown_option(tmp_path) -> None:
    photos = write_folder(tmp_path / "photos")
    with pytest.raises(ConfigError, match="difficult do not apply to folder datasets"):
        open_dataset(f"folder:{photos}", difficult="include")


def test_spec_file_content_errors_stay_dataset_errors(tmp_path) -> None:
    annotations, images = write_coco(tmp_path, json.dumps({"images": []}))
    with pytest.raises(DatasetError, match="'categories' is missing"):
        open_dataset(f"coco:{annotations}:{images}")

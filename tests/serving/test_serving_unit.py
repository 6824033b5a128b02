"""Serving parts without a server: protocol, config, archive, handler, command."""

from __future__ import annotations

import argparse
import ast
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from serving_support import CLASSES, TEST_CONFIG, ServedModel, encode, random_image

from cdul import cli
from cdul.core.classifier import SUPPORTED_ARCHS, build_classifier
from cdul.core.errors import ConfigError
from cdul.core.label_set import parse_class_names
from cdul.core.transforms import IMAGENET_MEAN, eval_transform
from cdul.serving import command as archive_command
from cdul.serving.archive import HANDLER_PATH, WEIGHTS_FILE_NAME, build_archive
from cdul.serving.config import CONFIG_FILE_NAME, ClassifierConfig, load_classifier
from cdul.serving.local import PRODUCTION_CONFIG, read_properties
from cdul.serving.protocol import RequestError, extract_image, resolve_threshold, status_phrase

# -- core pieces -------------------------------------------------------------------------


def test_eval_transform_resizes_whole_image_without_crop() -> None:
    image = random_image(0, (300, 100))
    tensor = eval_transform(32)(image)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    # A red stripe along the left edge survives (a centre crop would cut it off).
    pixels = image.load()
    for y in range(100):
        for x in range(60):
            pixels[x, y] = (255, 0, 0)
    red = eval_transform(32)(image)[0, :, 0]
    assert torch.allclose(red, torch.full_like(red, (1 - IMAGENET_MEAN[0]) / 0.229), atol=1e-4)


def test_build_classifier_heads_and_arch_check() -> None:
    assert build_classifier("resnet18", 5).fc.out_features == 5
    assert set(SUPPORTED_ARCHS) >= {"resnet18", "resnet101"}
    with pytest.raises(ConfigError, match="unsupported"):
        build_classifier("vgg16", 5)


# -- protocol ----------------------------------------------------------------------------


def test_extract_image_prefers_body_then_known_fields() -> None:
    assert extract_image({"body": b"x", "data": b"y"}) == ("body", b"x")
    assert extract_image({"threshold": b"0.1", "upload": bytearray(b"z")}) == ("upload", b"z")
    with pytest.raises(RequestError, match="no image"):
        extract_image({"threshold": b"0.1"})
    with pytest.raises(RequestError, match="several fields"):
        extract_image({"a": b"1", "b": b"2"})
    with pytest.raises(RequestError, match="as text"):
        extract_image({"body": "hello"})
    with pytest.raises(RequestError, match="as JSON"):
        extract_image({"body": {"k": 1}})


def test_resolve_threshold_precedence_and_validation() -> None:
    assert resolve_threshold({}, {}) is None  # the archive's per-class thresholds
    assert resolve_threshold({}, {"X-THRESHOLD": "0.2"}) == 0.2
    assert resolve_threshold({"threshold": b"0.7"}, {"x-threshold": "0.2"}) == 0.7
    assert resolve_threshold({"threshold": " 1 "}, None) == 1.0
    for bad in (b"abc", b"-0.5", b"2", b"inf", b""):
        with pytest.raises(RequestError, match="threshold"):
            resolve_threshold({"threshold": bad}, None)


def test_status_phrase_is_one_ascii_line() -> None:
    phrase = status_phrase("bad\nimage 'é'\t" + "x" * 500)
    assert phrase.isascii() and "\n" not in phrase and len(phrase) == 200


# -- config and weights --------------------------------------------------------------------


def test_config_round_trip_and_validation(tmp_path: Path) -> None:
    config = ClassifierConfig(arch="resnet18", classes=CLASSES, image_size=96, threshold=0.3)
    assert ClassifierConfig.read(config.write(tmp_path / "c.json")) == config
    with pytest.raises(ConfigError, match="duplicate"):
        ClassifierConfig(arch="resnet18", classes=("a", "a"))
    with pytest.raises(ConfigError, match="threshold"):
        ClassifierConfig(arch="resnet18", classes=("a",), threshold=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        ClassifierConfig.from_dict({**config.to_dict(), "extra": 1})


def test_parse_class_names(tmp_path: Path) -> None:
    listing = tmp_path / "classes.txt"
    listing.write_text("# shapes\ncircle\n\n square \n", encoding="utf-8")
    assert parse_class_names(str(listing)) == ("circle", "square")
    assert parse_class_names("cat, dog,bird") == ("cat", "dog", "bird")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_class_names(str(tmp_path / "missing.txt"))


def test_load_classifier_refuses_mismatched_weights(served_model: ServedModel) -> None:
    config = served_model.config
    with pytest.raises(ConfigError, match="12 outputs but 3 classes"):
        load_classifier(served_model.weights, ClassifierConfig(arch="resnet18", classes="abc"))
    with pytest.raises(ConfigError, match="do not fit a resnet34"):
        load_classifier(served_model.weights, ClassifierConfig(arch="resnet34", classes=CLASSES))
    model = load_classifier(served_model.weights, config)
    assert not model.training


def test_load_state_dict_refuses_pickled_modules(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(build_classifier("resnet18", 2), path)  # a whole module, not a state_dict
    with pytest.raises(ConfigError, match="not a loadable state_dict"):
        load_classifier(path, ClassifierConfig(arch="resnet18", classes=("a", "b")))


# -- archive and handler -----------------------------------------------------------------


def test_archive_contents(served_model: ServedModel) -> None:
    with zipfile.ZipFile(served_model.archive) as archive:
        names = set(archive.namelist())
        assert {WEIGHTS_FILE_NAME, CONFIG_FILE_NAME, "handler.py", "MAR-INF/MANIFEST.json"} <= names
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        config = json.loads(archive.read(CONFIG_FILE_NAME))
    assert manifest["model"]["serializedFile"] == WEIGHTS_FILE_NAME
    assert manifest["model"]["handler"] == "handler.py"
    assert ClassifierConfig.from_dict(config) == served_model.config


def test_handler_module_has_exactly_one_class_and_no_handle_function() -> None:
    """TorchServe's rules for a handler module (see ts/model_loader.py)."""
    tree = ast.parse(HANDLER_PATH.read_text(encoding="utf-8"))
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert classes == ["MultiLabelHandler"]
    assert "handle" not in functions


def test_build_archive_refuses_existing_and_mismatched(
    served_model: ServedModel, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        build_archive(served_model.weights, served_model.config, served_model.archive.parent)
    wrong = ClassifierConfig(arch="resnet18", classes=("a", "b"))
    with pytest.raises(ConfigError, match="outputs"):
        build_archive(served_model.weights, wrong, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_handler_answers_a_mixed_batch_without_torchserve(served_model: ServedModel) -> None:
    """The handler on TorchServe's own Context class, a good and a bad request."""
    from ts.context import Context, RequestProcessor

    from cdul.serving.handler import MultiLabelHandler

    model_dir = served_model.archive.parent.parent / "extracted"
    if not model_dir.exists():
        with zipfile.ZipFile(served_model.archive) as archive:
            archive.extractall(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    context = Context("cdul", str(model_dir), manifest, 2, None, "0.12.0")
    handler = MultiLabelHandler()
    handler.initialize(context)
    image = encode(random_image(3, (80, 60)), "PNG")
    context.request_processor = [RequestProcessor({"X-Threshold": "0.1"}), RequestProcessor({})]
    context.request_ids = {0: "good", 1: "bad"}
    answers = handler.handle([{"body": image}, {"body": b"nonsense"}], context)
    good = json.loads(answers[0])
    assert [good["probabilities"][c] for c in CLASSES] == pytest.approx(
        served_model.expected(image), abs=1e-5
    )
    assert good["threshold"] == 0.1 and set(good["thresholds"].values()) == {0.1}
    assert context.get_response_status(0) == (200, None)
    status, phrase = context.get_response_status(1)
    assert status == 400 and "not a JPEG" in phrase
    assert json.loads(answers[1])["code"] == 400


# -- command -----------------------------------------------------------------------------


def test_archive_command(served_model: ServedModel, tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    archive_command.configure(parser)
    args = parser.parse_args(
        [
            "--weights",
            str(served_model.weights),
            "--classes",
            ",".join(CLASSES),
            "--arch",
            "resnet18",
            "--image-size",
            "64",
            "--threshold",
            "0.4",
            "--output-dir",
            str(tmp_path / "store"),
            "--model-name",
            "shapes",
        ]
    )
    assert archive_command.run(args) == 0
    assert "shapes.mar" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "store" / "shapes.mar") as archive:
        assert json.loads(archive.read(CONFIG_FILE_NAME))["threshold"] == 0.4


def test_archive_command_through_cli(
    served_model: ServedModel, tmp_path: Path, monkeypatch, capsys
) -> None:
    # Registered here as well, so this test does not depend on the registry line.
    monkeypatch.setitem(
        cli.COMMANDS, "archive", cli.Command("cdul.serving.command", "build the model archive")
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["archive", "--help"])
    assert exit_info.value.code == 0
    assert "--weights" in capsys.readouterr().out
    code = cli.main(
        [
            "archive",
            "--weights",
            str(served_model.weights),
            "--classes",
            "a,b",
            "--arch",
            "resnet18",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "12 outputs but 2 classes" in capsys.readouterr().err


# -- deployment configuration ------------------------------------------------------------


@pytest.mark.parametrize("path", [PRODUCTION_CONFIG, TEST_CONFIG], ids=["production", "test"])
def test_torchserve_configs_keep_security_metrics_and_batching(path: Path) -> None:
    properties = read_properties(path)
    assert properties["disable_token_authorization"] == "false"
    assert properties["enable_model_api"] == "false"
    assert properties["metrics_mode"] == "prometheus"
    model = json.loads(properties["models"])["cdul"]["1.0"]
    assert model["marName"] == "cdul.mar"
    assert model["batchSize"] > 1 and model["maxBatchDelay"] > 0
    assert 1 <= model["minWorkers"] <= model["maxWorkers"]


def test_archive_command_takes_per_class_thresholds(
    served_model: ServedModel, tmp_path: Path, capsys
) -> None:
    (tmp_path / "t.json").write_text(json.dumps({c: 0.1 * (k % 10) for k, c in enumerate(CLASSES)}
                                                | {CLASSES[-1]: None}))  # fmt: skip
    argv = ["archive", "--weights", str(served_model.weights), "--classes", ",".join(CLASSES),
            "--arch", "resnet18", "--output-dir", str(tmp_path / "store")]  # fmt: skip
    assert cli.main([*argv, "--thresholds", str(tmp_path / "t.json")]) == 0
    assert f"the file {tmp_path / 't.json'}" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "store" / "cdul.mar") as archive:
        config = ClassifierConfig.from_dict(json.loads(archive.read(CONFIG_FILE_NAME)))
    assert config.format == 2 and config.thresholds[-1] is None
    assert config.decision_thresholds()[:3] == pytest.approx([0.0, 0.1, 0.2])
    (tmp_path / "bad.json").write_text(json.dumps({"a": 0.5}))
    assert cli.main([*argv, "--force", "--thresholds", str(tmp_path / "bad.json")]) == 2
    assert "unknown ['a']" in capsys.readouterr().err


def test_classifier_config_formats_and_per_class_thresholds() -> None:
    # A format 1 config (one threshold, before per-class thresholds) still loads.
    old = ClassifierConfig.from_dict({"arch": "resnet18", "classes": ["a", "b"], "threshold": 0.3,
                                      "format": 1})  # fmt: skip
    assert old.format == 1 and old.decision_thresholds() == [0.3, 0.3]
    new = ClassifierConfig(arch="resnet18", classes=("a", "b"), thresholds=(0.2, math.inf))
    assert new.to_dict()["thresholds"] == [0.2, None] and new.decision_thresholds()[1] == math.inf
    with pytest.raises(ConfigError, match="2 thresholds for 3 classes"):
        ClassifierConfig(arch="resnet18", classes=("a", "b", "c"), thresholds=(0.2, 0.3))
    with pytest.raises(ConfigError, match=r"within \[0, 1\], got 1.5"):
        ClassifierConfig(arch="resnet18", classes=("a", "b"), thresholds=(0.2, 1.5))
    with pytest.raises(ConfigError, match="format 3 is not supported"):
        ClassifierConfig(arch="resnet18", classes=("a",), format=3)

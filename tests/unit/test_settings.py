"""Settings: flags made from the config dataclasses, and no flag default drifting from
its config's default (a test per command fails if one does)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from cdul.cli import build_parser
from cdul.core.errors import ConfigError
from cdul.core.settings import add_flags, differences, flag_name, from_args, setting


@dataclass(frozen=True)
class _Config:
    name: str
    size: int = setting(3, "a size")
    rate: float = setting(0.5, "a rate", flag="--learning-rate")
    verbose: bool = setting(False, "talk")
    progress: bool = setting(True, "no bar")
    amp: bool | None = setting(None, "mixed precision")
    limit: int | None = setting(None, "at most N", type=int)
    internal: float = 2.0  # no flag


def test_flags_are_made_from_the_fields() -> None:
    parser = add_flags(argparse.ArgumentParser(), _Config)
    defaults = parser.parse_args([])
    assert vars(defaults) == {"_settings_file": None, "size": 3, "rate": 0.5, "verbose": False,
                              "progress": True, "amp": None, "limit": None}  # fmt: skip
    args = parser.parse_args(["--size", "7", "--learning-rate", "0.1", "--verbose",
                              "--no-progress", "--no-amp", "--limit", "4"])  # fmt: skip
    config = from_args(_Config, args, name="x")
    assert config == _Config("x", size=7, rate=0.1, verbose=True, progress=False, amp=False,
                             limit=4)  # fmt: skip
    assert flag_name(_Config, "rate") == "--learning-rate"
    assert flag_name(_Config, "progress") == "--no-progress"
    with pytest.raises(SystemExit):  # argparse refuses a non-integer for an int field
        parser.parse_args(["--size", "big"])
    assert "--internal" not in parser.format_help()
    assert "(default: 3)" in parser.format_help()


def test_differences_name_each_changed_setting() -> None:
    stored = {"zeta": 0.5, "spec": "grid:3x3", "epochs": 2}
    now = {"zeta": 0.4, "spec": "grid:3x3", "epochs": 5, "new": 1}
    assert differences(stored, now, ignore={"epochs"}) == [
        "zeta: stored 0.5, now 0.4",
        "new: stored None, now 1",
    ]
    assert differences(stored, dict(stored)) == []


def _config_classes():
    from cdul.clip_service.server import ServerConfig
    from cdul.clip_service.servicer import Limits
    from cdul.labeler.job import LabelConfig
    from cdul.trainer.config import TrainConfig

    return {
        ("label", "voc:/data:val", "-o", "file:///tmp/run"): [LabelConfig],
        ("clip-serve",): [ServerConfig, Limits],
        ("train", "file:///tmp/run", "voc:/data:train"): [TrainConfig],
    }


# Flags whose None means "the command decides" (here: from the environment, as a
# Kubernetes Indexed Job sets it), not a default of their own.
RESOLVED_BY_THE_COMMAND = {"shard_index", "num_shards"}


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("argv", list(_config_classes()), ids=lambda argv: argv[0])
def test_every_flag_default_equals_its_config_default(argv: tuple[str, ...]) -> None:
    """Parse a command with no options: each flag whose destination names a field of the
    command's config holds exactly that field's default (the drift this catches: the
    labeler's --wait-for-service said 120 s while LabelConfig said 60)."""
    parsed = vars(build_parser(argv[0]).parse_args(list(argv)))
    checked = 0
    for cls in _config_classes()[argv]:
        for field in dataclasses.fields(cls):
            if field.name in RESOLVED_BY_THE_COMMAND:
                assert parsed.get(field.name) is None
                continue
            if field.name in parsed and field.default is not dataclasses.MISSING:
                assert parsed[field.name] == _default(field), (
                    f"cdul {argv[0]}: the flag for {cls.__name__}.{field.name} defaults to "
                    f"{parsed[field.name]!r}, the config to {_default(field)!r}"
                )
                checked += 1
    assert checked >= 5, f"cdul {argv[0]}: only {checked} flags matched config fields"


def test_the_check_catches_a_drifted_default() -> None:
    """The comparison above, on a parser whose flag disagrees with its field: it differs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=4)
    parsed = vars(parser.parse_args([]))
    (size,) = [f for f in dataclasses.fields(_Config) if f.name == "size"]
    assert parsed["size"] != _default(size)


def test_label_config_validates_its_own_settings() -> None:
    from cdul.labeler.job import LabelConfig

    base = {"dataset": "voc:/x", "output": "file:///tmp/r", "endpoints": ("127.0.0.1:1",)}
    for bad, message in (({"part_size": 0}, "--part-size must be >= 1"),
                         ({"zeta": 1.5}, "--zeta must be within"),
                         ({"snippet_spec": "grid:0x3"}, "grid"),
                         ({"shard_index": 2, "num_shards": 2}, "shard index 2"),
                         ({"endpoints": ()}, "no CLIP service endpoint")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            LabelConfig(**{**base, **bad})


def test_a_preset_replaces_defaults_and_flags_still_win() -> None:
    from cdul.trainer.config import PRESETS, TrainConfig, from_args

    def config(*flags: str) -> TrainConfig:
        return from_args(build_parser("train").parse_args(["train", "r", "voc:/x", *flags]))

    paper = config()
    assert (paper.arch, paper.lr, paper.epochs, paper.batch_size) == ("resnet101", 1e-5, 20, 8)
    world = config("--preset", "world", "--epochs", "3", "--lr", "1e-5")
    assert (world.arch, world.image_size, world.update_every) == ("resnet18", 128, 5)
    # given flags win, even one typed with the paper's default value
    assert (world.epochs, world.lr) == (3, 1e-5)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(set(preset) <= fields for preset in PRESETS.values())


def test_server_config_refuses_bad_settings_naming_the_flag(capsys) -> None:
    from cdul.cli import main
    from cdul.clip_service.server import ServerConfig

    for bad, message in (({"max_batch": 0}, "--max-batch must be >= 1"),
                         ({"port": 70000}, "--port must be within"),
                         ({"tls_cert": "cert.pem"}, "--tls-cert and --tls-key go together"),
                         ({"preprocess_in": "gpu"}, "--preprocess-in must be")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            ServerConfig(**bad)
    # from the command line: one line, exit 2, no traceback
    assert main(["clip-serve", "--max-batch", "0"]) == 2
    assert (
        capsys.readouterr().err.strip() == "cdul clip-serve: error: --max-batch must be >= 1, got 0"
    )


def test_a_settings_file_replaces_defaults_and_flags_still_win(tmp_path) -> None:
    import json

    from cdul.trainer.config import TrainConfig, from_args

    def config(*flags: str) -> TrainConfig:
        return from_args(build_parser("train").parse_args(["train", "r", "voc:/x", *flags]))

    # A run's stored training/config.json: paths are not settings and are ignored.
    stored = {**dataclasses.asdict(config("--preset", "world", "--epochs", "4")),
              "labels": "file:///elsewhere", "output": "file:///elsewhere"}  # fmt: skip
    settings = tmp_path / "config.json"
    settings.write_text(json.dumps(stored))
    again = config("--config", str(settings))
    assert (again.arch, again.epochs, again.lr, again.labels) == ("resnet18", 4, 1e-4, "r")
    assert config("--config", str(settings), "--epochs", "9").epochs == 9  # the flag wins
    # over a preset too: file > preset > the field's default
    assert config("--preset", "paper", "--config", str(settings)).arch == "resnet18"

    settings.write_text(json.dumps({"epochs": 2, "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match=r"unknown settings \['learning_rate'\]"):
        config("--config", str(settings))
    settings.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        config("--config", str(settings))
    settings.write_text("{not json")
    with pytest.raises(ConfigError, match="does not parse"):
        config("--config", str(settings))
    with pytest.raises(ConfigError, match="cannot read the settings file"):
        config("--config", str(tmp_path / "missing.json"))


def test_clip_serve_settings_file_keeps_the_commands_spellings_of_none(
    tmp_path, monkeypatch
) -> None:
    from cdul.clip_service import command

    settings = tmp_path / "server.yaml"
    settings.write_text("max_batch: 8\npretrained: none\nmetrics_port: -1\n")
    args = build_parser("clip-serve").parse_args(["clip-serve", "--config", str(settings)])
    captured = {}

    class Resolved(Exception):
        pass

    def stand_in(config):
        # What is under test is the config the command resolves; a real server would
        # load a CLIP and bind ports, which other tests do.
        captured["config"] = config
        raise Resolved

    monkeypatch.setattr(command, "SimilarityServer", stand_in)
    with pytest.raises(Resolved):
        command.run(args)
    config = captured["config"]
    assert (config.max_batch, config.pretrained, config.metrics_port) == (8, None, None)
    assert config.max_wait_ms == 5.0 and config.model == "RN50"

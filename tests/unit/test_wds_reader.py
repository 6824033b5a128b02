"""``wds:`` specs without a CLIP service: brace expansion, sample keys, label files,
truncated shards, the missing shards named, and ``cdul dataset`` on tar shards."""

from __future__ import annotations

import pytest
from support.tars import write_tar

from cdul import cli
from cdul.core.datasets.wds import TarShards, expand_braces, split_name
from cdul.core.errors import ConfigError, DatasetError

CLASSES = ("cat", "dog", "bird")


def test_brace_expansion_as_webdataset_writes_shard_names():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar",
                                                  "b/9.tar", "b/10.tar"]  # fmt: skip
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert len(expand_braces("{00000..09999}.tar")) == 10_000
    with pytest.raises(ConfigError, match="counts down"):
        expand_braces("{5..1}.tar")
    with pytest.raises(ConfigError, match="neither a range"):
        expand_braces("{x}.tar")


def test_the_key_ends_at_the_file_names_first_dot():
    assert split_name("images/000123.jpg") == ("images/000123", "jpg")
    assert split_name("a.b/x.seg.PNG") == ("a.b/x", "seg.png")
    assert split_name("README") == ("README", "")


def test_samples_labels_and_problems(tmp_path):
    write_tar(tmp_path / "s-0.tar", [
        ("a.jpg", b"A"), ("a.json", b'{"labels": ["dog", 0]}'),
        ("b.png", b"B"), ("b.cls", b"2\n"),
        ("c.webp", b"C"), ("c.json", b'{"caption": "no labels"}'),
        ("d.json", b'{"labels": ["cat"]}'),
        ("e.jpg", b"E"), ("e.json", b'{"labels": ["horse"]}'),
        ("f.jpg", b"F"), ("f.cls", b"7"),
        ("g.jpg", b"G"), ("g.json", b"{not json"),
    ])  # fmt: skip
    shards = TarShards(f"wds:{tmp_path}/s-{{0..0}}.tar", classes=CLASSES)
    samples = list(shards.samples(0))
    assert [(s.key, s.data, s.labels) for s in samples[:3]] == [
        ("a", b"A", ["dog", "cat"]), ("b", b"B", ["bird"]), ("c", b"C", None)]  # fmt: skip
    problems = {s.key: s.problem for s in samples[3:]}
    assert "s-0.tar#d: no image member (has json)" in problems["d"]
    assert "class 'horse' is not one of the run's classes" in problems["e"]
    assert "class index 7 outside 0..2" in problems["f"]
    assert "bad label file" in problems["g"]


def test_a_truncated_shard_names_the_last_good_sample(tmp_path):
    # Each member: a 512-byte header and 600 bytes padded to 1,024.
    members = [(f"{k}.jpg", bytes(600)) for k in range(4)]
    # Broken inside 3.jpg's data: 3's header was read, so 2 is known complete.
    # Broken inside 3.jpg's header: 2 may have had more members; it goes with the rest.
    for cut, last in ((3 * 1536 + 512 + 100, "2"), (3 * 1536 + 100, "1")):
        write_tar(tmp_path / "t.tar", members, cut=cut)
        shards = TarShards(f"wds:{tmp_path}/t.tar", classes=CLASSES)
        seen = []
        with pytest.raises(
            DatasetError,
            match=rf"t\.tar: unreadable tar shard after sample '{last}'",
        ):
            for sample in shards.samples(0):
                seen.append(sample.key)
        assert seen == [str(k) for k in range(int(last) + 1)]


def test_missing_shards_and_bad_specs_are_named(tmp_path):
    write_tar(tmp_path / "s-0.tar", [("a.jpg", b"A")])
    with pytest.raises(ConfigError, match=r"2 shard\(s\) missing under .*: s-1\.tar, s-2\.tar"):
        TarShards(f"wds:{tmp_path}/s-{{0..2}}.tar", classes=CLASSES)
    with pytest.raises(ConfigError, match="expected wds:"):
        TarShards("wds:", classes=CLASSES)
    with pytest.raises(ConfigError, match="names a shard twice"):
        TarShards(f"wds:{tmp_path}/s-{{0,0}}.tar", classes=CLASSES)


def test_cdul_dataset_describes_tar_shards(tmp_path, capsys):
    write_tar(tmp_path / "s-0.tar", [("a.jpg", b"A"), ("a.cls", b"1"), ("b.json", b"{}")])
    write_tar(tmp_path / "s-1.tar", [("c.jpg", b"C"), ("c.cls", b"1"), ("d.jpg", b"D")])
    spec = f"wds:{tmp_path}/s-{{0..1}}.tar"
    assert cli.main(["dataset", spec, "--classes", ",".join(CLASSES)]) == 0
    out = capsys.readouterr().out
    assert f"{spec}: 2 tar shards, 4 samples, 3 images, 2 with a label file, 3 classes" in out
    assert "  dog   2\n" in out and "1 problem(s)" in out and "s-0.tar#b: no image member" in out

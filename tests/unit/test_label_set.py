"""Label sets and prompt ensembles: validation, digests, named template sets."""

import pytest

from cdul.core.clip_scoring import TEMPLATE_SOURCES, prompt_templates
from cdul.core.errors import ConfigError
from cdul.core.label_set import TEMPLATE_SETS, LabelSet, read_templates


def test_named_sets_are_open_clips_and_expand_to_format_strings():
    assert set(TEMPLATE_SOURCES) == set(TEMPLATE_SETS)
    simple = prompt_templates(["simple"])
    assert len(simple) == 7 and simple[0] == "itap of a {}."
    assert len(prompt_templates(["openai", "a {} again"])) == 81


def test_digest_is_unchanged_for_one_template_and_differs_for_an_ensemble():
    one = LabelSet(("cat", "dog"))
    assert one.digest() == LabelSet(("cat", "dog"), "a photo of a {}").digest()
    assert LabelSet(("cat", "dog"), templates=("simple",)).digest() != one.digest()
    assert (
        LabelSet(("cat", "dog"), templates=("a {}", "b {}")).digest()
        != LabelSet(("cat", "dog"), templates=("b {}", "a {}")).digest()
    )


def test_template_files_and_names(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a {}\n# comment\n\nthe {} here\n")
    assert read_templates(str(path)) == ("a {}", "the {} here")
    assert read_templates("openai") == ("openai",)
    with pytest.raises(ConfigError, match="not a template set"):
        read_templates("imagenet")
    path.write_text("a {}\na {}\n")
    with pytest.raises(ConfigError, match=r"template file .* repeats a \{\}"):
        read_templates(str(path))
    with pytest.raises(ConfigError, match="placeholder"):
        LabelSet(("cat",), templates=("simple", "nothing here"))
    with pytest.raises(ConfigError, match="placeholder"):
        LabelSet(("cat",), template="simple")  # a set name is only a name in templates

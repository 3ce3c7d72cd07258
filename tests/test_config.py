"""Config loading: typed overrides, unknown keys with the closest name, precise errors."""

import pytest

from constitutional.config import GenerateConfig, apply_override, load_config
from constitutional.errors import InputError


def test_overrides_are_typed_and_nested(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sampling:\n  temperature: 0.2\nmodel:\n  name: smollm2-135m\n")
    cfg = load_config(GenerateConfig, f, ["sampling.n=4", 'sampling.stop=["\\n\\nHuman:"]',
                                          "model.batch_size=8", "limit=10"])
    assert cfg.sampling.n == 4 and cfg.sampling.temperature == 0.2
    assert cfg.sampling.stop == ["\n\nHuman:"]
    assert cfg.model.batch_size == 8 and cfg.limit == 10


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(InputError) as e:
        load_config(GenerateConfig, None, ["sampling.temprature=0.5"])
    assert "sampling.temprature" in str(e.value)
    assert "did you mean 'sampling.temperature'" in str(e.value)


def test_unknown_top_level_key_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("promts: x.jsonl\n")
    with pytest.raises(InputError) as e:
        load_config(GenerateConfig, f)
    assert str(e.value).startswith(f"{f}:1: promts: unknown key")
    assert "'prompts'" in str(e.value)


def test_wrong_type_names_the_field():
    with pytest.raises(InputError) as e:
        load_config(GenerateConfig, None, ["sampling.n=many"])
    assert "sampling.n" in str(e.value) and "'many'" in str(e.value)
    with pytest.raises(InputError) as e:
        load_config(GenerateConfig, None, ["sampling.top_p=1.5"])
    assert "sampling.top_p" in str(e.value)


def test_malformed_yaml_names_the_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  name: a\n  batch_size: [1, 2\nlimit: 3\n")
    with pytest.raises(InputError) as e:
        load_config(GenerateConfig, f)
    assert str(e.value).startswith(f"{f}:") and "malformed YAML" in str(e.value)
    assert e.value.line is not None and e.value.line >= 3


def test_override_syntax_errors():
    with pytest.raises(InputError, match="key.path=value"):
        apply_override({}, "sampling.n")
    with pytest.raises(InputError, match="not a section"):
        apply_override({"limit": 3}, "limit.x=1")


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(GenerateConfig, tmp_path / "nope.yaml")

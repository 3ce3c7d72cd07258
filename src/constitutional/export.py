"""Export a run's data as Hugging Face datasets, with a dataset card.

Three datasets, each as JSONL and Parquet (and, when asked, a `save_to_disk` folder), in the
shapes TRL trains on as they are and that every `cai` command reads back:
- `sft` (from the critique stage): `{"messages": [..., {"role": "assistant", "content": <final
  revision>}]}`, TRL's conversational language-modelling shape (`cai train-sft --revisions`);
- `pairs` (from the critique stage): the revision chosen over the original answer, in TRL's
  conversational preference shape (`prompt` as messages, `chosen` / `rejected` one assistant
  message each), plus `messages` and the columns of Hugging Face's open CAI recipe datasets
  (`init_prompt`, `init_response`, `critic_prompt`, `critic_response`, `revision_prompt`,
  `revision_response`);
- `labelled` (from the label stage): the AI-labelled pairs, the main product of RLAIF, in the
  same preference shape oriented by the label (`chosen` is the answer the feedback model
  preferred), with `label` = p(chosen is better) >= 0.5, `votes` (each principle and order's
  log-probabilities), `principles`, `disagree` and `method` (`cai train-pm --labels`, DPO).
The card (README.md) records the constitution, the models, the method and the counts.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from constitutional.artifacts import MANIFEST, package_versions, read_output
from constitutional.comparisons import preference_example, revision_pair
from constitutional.constitution import load_constitution
from constitutional.datasource import to_dataset
from constitutional.errors import InputError
from constitutional.jsonio import sha256_file, write_atomic, write_json_atomic, write_jsonl_atomic
from constitutional.rundir import RunDir

PREFERENCE = ("prompt", "chosen", "rejected")


def sft_row(r: dict) -> dict:
    return {"id": f"{r['id']}#{r['sample']}",
            "messages": r["messages"] + [{"role": "assistant", "content": r["revision"]}]}


def pair_row(r: dict) -> dict:
    """A critique row as a preference row (`revision_pair`) with the open recipe's columns."""
    first = r["rounds"][0]
    pair = revision_pair(r)
    return {"id": pair["source_id"], **{k: pair[k] for k in PREFERENCE},
            "messages": r["messages"] + [{"role": "assistant", "content": r["revision"]}],
            "init_prompt": r["prompt"], "init_response": r["initial_response"],
            "critic_prompt": first.get("critique_request", ""),
            "critic_response": first.get("critique", ""),
            "revision_prompt": first["revision_request"], "revision_response": r["revision"],
            "rounds": len(r["rounds"]), "principles": [rd["principle"] for rd in r["rounds"]]}


def labelled_row(r: dict) -> dict:
    """A label-stage row as a preference row oriented by its label."""
    pair = preference_example(r["conversation"], r["response_a"], r["response_b"], r["label"], "ai",
                   r["id"])
    return {"id": r["id"], **{k: pair[k] for k in PREFERENCE}, "label": round(pair["margin"], 6),
            "chosen_was": "a" if r["label"] >= 0.5 else "b", "votes": r["votes"],
            "principles": sorted({v["principle"] for v in r["votes"]}),
            "disagree": r["disagree"], "method": r["method"]}


def export_run(run_dir: str | Path, out_dir: str | Path | None = None,
               include_flagged: bool = False, parquet: bool = True,
               save_to_disk: bool = False, push_to_hub: str | None = None) -> dict:
    """Export every finished stage that has data (critique: sft + pairs; label: labelled);
    write the card and the manifest last; return the counts per dataset."""
    run = RunDir.of(run_dir)
    sources = {name: stage for name, stage in (("critique", run.critique), ("label", run.labels))
               if (stage.manifest() or {}).get("status") == "complete"}
    if not sources:
        raise InputError("no finished critique or label stage here (run `cai critique` or "
                         "`cai label` first)", path=str(run.root))
    out = Path(out_dir) if out_dir else run.export
    out.mkdir(parents=True, exist_ok=True)
    data, counts = {}, {}
    if "critique" in sources:
        rows = read_output(sources["critique"].output)
        kept = [r for r in rows if r["ok"] or include_flagged]
        data["sft"], data["pairs"] = [sft_row(r) for r in kept], [pair_row(r) for r in kept]
        counts["critique"] = {"rows": len(rows), "exported": len(kept), "flags": dict(
            Counter(f for r in rows for f in r["flags"]))}
    if "label" in sources:
        rows = read_output(sources["label"].output)
        data["labelled"] = [labelled_row(r) for r in rows]
        counts["label"] = label_counts(data["labelled"])
    for name, rows in data.items():
        write_jsonl_atomic(out / f"{name}.jsonl", rows)
        if parquet and rows:
            _write_parquet(out / f"{name}.parquet", rows)
        if save_to_disk and rows:
            _save_to_disk(out / name, rows)
    manifests = {k: s.manifest() for k, s in sources.items()}
    card = dataset_card(manifests, counts, include_flagged, "parquet" if parquet else "jsonl")
    write_atomic(out / "README.md", card)
    if push_to_hub:
        _push(push_to_hub, data, card)
    # written last: its presence with status complete means every file above is whole
    files = sorted(f for f in out.iterdir() if f.is_file() and f.name != MANIFEST)
    write_json_atomic(out / MANIFEST, {
        "stage": "export", "status": "complete",
        "rows": {name: len(rows) for name, rows in data.items()},
        "inputs": {k: m.get("output_sha256") or sha256_file(sources[k].output)
                   for k, m in manifests.items()},
        "config": {"include_flagged": include_flagged, "parquet": parquet,
                   "save_to_disk": save_to_disk}, "counts": counts,
        "files": {f.name: sha256_file(f) for f in files}, "versions": package_versions()})
    return counts


def export_revisions(run_dir: str | Path, out_dir: str | Path | None = None,
                     include_flagged: bool = False, parquet: bool = True) -> dict:
    """The SL-CAI stage's export (what `cai sl-cai` writes): the critique stage's counts."""
    return export_run(run_dir, out_dir, include_flagged, parquet)["critique"]


def label_counts(rows: list[dict]) -> dict:
    """How confident the labels are: counts by p(chosen better), mean, orders' disagreement."""
    bins = Counter(min(4, int((r["label"] - 0.5) * 10)) for r in rows)
    dis = [r["disagree"] for r in rows if r["disagree"] is not None]
    return {"pairs": len(rows),
            "mean_label": round(sum(r["label"] for r in rows) / max(1, len(rows)), 4),
            "label_bins": {f"[{0.5 + k / 10:.1f}, {0.6 + k / 10:.1f}{']' if k == 4 else ')'}":
                           bins.get(k, 0) for k in range(5)},
            "orders_disagree": round(sum(dis) / len(dis), 4) if dis else None,
            "a_chosen": sum(r["chosen_was"] == "a" for r in rows)}


def _write_parquet(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    to_dataset(rows).to_parquet(str(tmp))
    os.replace(tmp, path)


def _save_to_disk(folder: Path, rows: list[dict]) -> None:
    """A `load_from_disk` folder, appearing by rename so it is whole or absent."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    to_dataset(rows).save_to_disk(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _push(repo: str, data: dict[str, list[dict]], card: str) -> None:
    """Each dataset as a config of one hub dataset repo, then our card's text (the library
    writes the configs' metadata; the card's prose replaces its placeholder text)."""
    from huggingface_hub import DatasetCard

    for name, rows in data.items():
        if rows:
            to_dataset(rows).push_to_hub(repo, config_name=name)
    hub_card = DatasetCard.load(repo)
    hub_card.text = card.split("\n---\n", 1)[1]
    hub_card.push_to_hub(repo)


def _constitution_line(spec: str, kind: str) -> str:
    try:
        _, c = load_constitution(spec)
    except InputError:
        return spec
    n = len(c.critique_revision) if kind == "critique" else len(c.choice)
    what = "critique/revision pairs" if kind == "critique" else "choice principles"
    return f"{c.name} v{c.version} ({n} {what}; fingerprint {c.fingerprint()[:12]})"


def _model_line(model: dict) -> str:
    return f"`{model['name']}` ({model['backend']} backend, dtype {model['dtype']})"


def dataset_card(manifests: dict, counts: dict, include_flagged: bool, ext: str) -> str:
    names = (["sft", "pairs"] if "critique" in manifests else []) + \
        (["labelled"] if "label" in manifests else [])
    configs = "".join(f"- config_name: {n}\n  data_files: {n}.{ext}\n" for n in names)
    sections = []
    if "critique" in manifests:
        sections.append(_critique_section(manifests["critique"], counts["critique"],
                                          include_flagged, ext))
    if "label" in manifests:
        sections.append(_label_section(manifests["label"], counts["label"], ext))
    versions = next(iter(manifests.values())).get("versions", {})
    return f"""---
configs:
{configs}tags: [constitutional-ai, rlaif, synthetic]
---
# Constitutional AI data

Made with `constitutional`. Each file loads with `datasets.load_dataset("parquet" or "json",
data_files=...)`, and `cai` reads each one back (`cai train-sft --revisions sft.{ext}`,
`cai label --pairs pairs.{ext}`, `cai train-pm --labels labelled.{ext}`); TRL's SFT and
DPO trainers take `sft` and `pairs` / `labelled` as they are.

{chr(10).join(sections)}
- **versions:** `{json.dumps(versions)}`

The answers were written by the models named above; their licenses apply to them. Red-team
prompts ask for harmful content on purpose, and rejected answers may contain it.
"""


def _critique_section(manifest: dict, counts: dict, include_flagged: bool, ext: str) -> str:
    cfg = manifest["config"]
    settings = {k: cfg[k] for k in ("rounds", "samples", "mode", "few_shot", "prompt_format",
                                    "system_prompt", "copy_threshold")}
    settings["sampling"] = cfg["sampling"]
    critic = f"\n- **critic and reviser:** {_model_line(cfg['critic'])}" if cfg.get("critic") \
        else ""
    kept = "flagged rows included" if include_flagged else "flagged rows left out"
    return f"""## Critique -> revision (SL-CAI): `sft`, `pairs`

For each red-team prompt the policy answered, then the answer was critiqued and revised under
principles drawn from the constitution.

- **constitution:** {_constitution_line(cfg['constitution'], 'critique')}
- **policy (initial answers):** {_model_line(cfg['model'])}{critic}
- **prompts:** `{cfg['prompts']}` (sha256 {manifest['inputs']['prompts'][:12]})
- **rows:** {counts['exported']} exported of {counts['rows']} ({kept}); flags: {json.dumps(counts['flags'])}
- **settings:** `{json.dumps(settings)}`

Files: `sft.{ext}` (`messages`: the prompt and the final revision); `pairs.{ext}` (`prompt`
as messages, `chosen` the final revision, `rejected` the original answer, `messages`, and
`init_prompt`, `init_response`, `critic_prompt`, `critic_response`, `revision_prompt`,
`revision_response` for the first round's critique and the final revision, `rounds`,
`principles`).
"""


def _label_section(manifest: dict, counts: dict, ext: str) -> str:
    cfg = manifest["config"]
    bins = ", ".join(f"{k}: {v}" for k, v in counts["label_bins"].items())
    dis = counts["orders_disagree"]
    return f"""## AI-labelled pairs (RLAIF): `labelled`

Two answers per prompt, labelled by the feedback model: the label is the probability of the
better option read from the model's log-probabilities of the option letters, averaged over
principles drawn from the constitution{' and both answer orders' if cfg.get('debias') else ''}.

- **constitution:** {_constitution_line(cfg['constitution'], 'choice')}
- **feedback model:** {_model_line(cfg['model'])}
- **method:** {manifest.get('method') or _method(cfg)} (principles per pair: {cfg['principles']})
- **pairs:** {counts['pairs']}; mean label {counts['mean_label']}; answer A chosen {counts['a_chosen']} times
- **label distribution** (p(chosen better)): {bins}
- **orders disagree:** {'-' if dis is None else f'{dis:.1%}'} of pairs

File: `labelled.{ext}`: `prompt` (messages), `chosen`, `rejected` (one assistant message
each), `label`, `chosen_was` (which answer of the original pair, a or b), `votes`,
`principles`, `disagree`, `method`. A label near 0.5 is a weak preference; filter on `label`
before training if you want only confident pairs.
"""


def _method(cfg: dict) -> str:
    from constitutional.labeling import LabelConfig, method_name

    try:
        return method_name(LabelConfig.model_validate(cfg))
    except ValueError:
        return "-"

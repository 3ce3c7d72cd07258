"""Export critique -> revision data as Hugging Face datasets, with a dataset card.

Two shapes, JSONL and Parquet each:
- `sft`: `{"messages": [..., {"role": "assistant", "content": <final revision>}]}`, for SFT;
- `pairs`: `prompt` / `chosen` / `rejected` (the revision chosen, the original answer
  rejected) plus the columns of Hugging Face's open CAI recipe datasets (`init_prompt`,
  `init_response`, `critic_prompt`, `critic_response`, `revision_prompt`, `revision_response`).
The card (README.md) records the constitution, the model and the settings that made the data.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from constitutional.artifacts import MANIFEST, package_versions, read_output
from constitutional.constitution import load_constitution
from constitutional.errors import InputError
from constitutional.jsonio import sha256_file, write_atomic, write_json_atomic, write_jsonl_atomic
from constitutional.rundir import RunDir


def sft_row(r: dict) -> dict:
    return {"id": f"{r['id']}#{r['sample']}",
            "messages": r["messages"] + [{"role": "assistant", "content": r["revision"]}]}


def pair_row(r: dict) -> dict:
    first = r["rounds"][0]
    return {"id": f"{r['id']}#{r['sample']}", "prompt": r["prompt"], "messages":
            r["messages"] + [{"role": "assistant", "content": r["revision"]}],
            "chosen": r["messages"] + [{"role": "assistant", "content": r["revision"]}],
            "rejected": r["messages"] + [{"role": "assistant",
                                          "content": r["initial_response"]}],
            "init_prompt": r["prompt"], "init_response": r["initial_response"],
            "critic_prompt": first.get("critique_request", ""),
            "critic_response": first.get("critique", ""),
            "revision_prompt": first["revision_request"], "revision_response": r["revision"],
            "rounds": len(r["rounds"]), "principles": [rd["principle"] for rd in r["rounds"]]}


def export_revisions(run_dir: str | Path, out_dir: str | Path | None = None,
                     include_flagged: bool = False, parquet: bool = True) -> dict:
    """Write sft.jsonl, pairs.jsonl (and .parquet) and README.md; return the counts."""
    run = RunDir.of(run_dir)
    stage = run.critique
    manifest = stage.manifest()
    if not manifest or manifest.get("status") != "complete":
        raise InputError("no finished critique stage here (run `cai critique` first)",
                         path=str(stage.path))
    out = Path(out_dir) if out_dir else run.export
    out.mkdir(parents=True, exist_ok=True)
    rows = read_output(stage.output)
    kept = [r for r in rows if r["ok"] or include_flagged]
    shapes = {"sft": [sft_row(r) for r in kept], "pairs": [pair_row(r) for r in kept]}
    for name, data in shapes.items():
        write_jsonl_atomic(out / f"{name}.jsonl", data)
        if parquet and data:
            _write_parquet(out / f"{name}.parquet", data)
    counts = {"rows": len(rows), "exported": len(kept),
              "flags": dict(Counter(f for r in rows for f in r["flags"]))}
    write_atomic(out / "README.md", dataset_card(manifest, counts, include_flagged, parquet))
    # written last: its presence with status complete means every file above is whole
    files = sorted(f for f in out.iterdir() if f.is_file() and f.name != MANIFEST)
    write_json_atomic(out / MANIFEST, {
        "stage": "export", "status": "complete", "rows": len(kept),
        "inputs": {"critique": manifest.get("output_sha256") or sha256_file(stage.output)},
        "config": {"include_flagged": include_flagged, "parquet": parquet}, "counts": counts,
        "files": {f.name: sha256_file(f) for f in files}, "versions": package_versions()})
    return counts


def _write_parquet(path: Path, data: list[dict]) -> None:
    import datasets

    datasets.disable_progress_bars()
    tmp = path.with_name(path.name + ".tmp")
    datasets.Dataset.from_list(data).to_parquet(str(tmp))
    os.replace(tmp, path)


def dataset_card(manifest: dict, counts: dict, include_flagged: bool, parquet: bool) -> str:
    cfg = manifest["config"]
    try:
        _, c = load_constitution(cfg["constitution"])
        constitution = f"{c.name} v{c.version} ({len(c.critique_revision)} critique/revision " \
                       f"pairs; fingerprint {c.fingerprint()[:12]})"
    except InputError:
        constitution = cfg["constitution"]
    ext = "parquet" if parquet else "jsonl"
    settings = {k: cfg[k] for k in ("rounds", "samples", "mode", "few_shot", "prompt_format",
                                    "system_prompt", "copy_threshold")}
    settings["sampling"] = cfg["sampling"]
    return f"""---
configs:
- config_name: sft
  data_files: sft.{ext}
- config_name: pairs
  data_files: pairs.{ext}
tags: [constitutional-ai, synthetic, sl-cai]
---
# Critique -> revision data (SL-CAI)

Made with `constitutional` (`cai critique`): for each red-team prompt a helpful model answered,
then critiqued and revised its answer under principles drawn from a constitution.

- **constitution:** {constitution}
- **model:** `{cfg['model']['name']}` ({cfg['model']['backend']} backend, dtype {cfg['model']['dtype']})
- **prompts:** `{cfg['prompts']}` (sha256 {manifest['inputs']['prompts'][:12]})
- **rows:** {counts['exported']} exported of {counts['rows']} ({'flagged rows included' if include_flagged else 'flagged rows left out'}); flags: {json.dumps(counts['flags'])}
- **settings:** `{json.dumps(settings)}`
- **versions:** `{json.dumps(manifest.get('versions', {}))}`

## Files
- `sft.{ext}`: `messages`, the prompt followed by the final revision (for supervised fine-tuning).
- `pairs.{ext}`: `prompt`, `chosen` (final revision), `rejected` (original answer), `messages`,
  and `init_prompt`, `init_response`, `critic_prompt`, `critic_response`, `revision_prompt`,
  `revision_response` (first round's critique and the final revision), `rounds`, `principles`.

The answers were written by the model named above; its license applies to them. Red-team
prompts ask for harmful content on purpose, and original answers (`rejected`) may contain it.
"""

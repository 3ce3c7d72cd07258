"""SFT speed: our SL-CAI trainer against plain fp32 TRL full fine-tuning with TRL's defaults.

Same data in the same run: batch 8 x 256 tokens (every example truncated to 256), embedded
SmolLM2-135M-Instruct. Prints seconds per step (median after a warm-up step), tokens/s, the
speed-up over the baseline, and the loss curves side by side: our full fine-tune in bf16 is
checked against the fp32 baseline, our bf16 LoRA against the same LoRA in fp32.

    .venv/bin/python bench/train.py [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

BATCH, LENGTH = 8, 256


def rows(n: int) -> list[dict]:
    from constitutional.prompts_io import load_prompts

    _, red = load_prompts("bundled:redteam")
    _, helpful = load_prompts("bundled:helpful")
    filler = " ".join(r.text for r in helpful)          # long enough to pass 256 tokens
    return [{"prompt": red[i].messages,
             "completion": [{"role": "assistant", "content": filler[i * 7:]}]}
            for i in range(n)]


class StepTimer:
    def __init__(self):
        import transformers

        outer = self

        class CB(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                outer.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                outer.times.append(time.perf_counter() - outer.t0)
        self.times: list[float] = []
        self.callback = CB()


def run(name: str, make, steps: int) -> dict:
    import torch

    trainer = make()
    timer = StepTimer()
    trainer.add_callback(timer.callback)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    per_step = statistics.median(timer.times[1:]) if len(timer.times) > 1 else timer.times[0]
    del trainer
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(f"  {name}: {per_step:.2f} s/step, losses {[round(x, 3) for x in losses]}",
          file=sys.stderr)
    return {"name": name, "s_per_step": per_step, "losses": losses}


def baseline(data, steps: int, out: Path):
    """TRL's defaults, fp32, full fine-tuning (activation checkpointing stays on: the default)."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from constitutional.models import resolve_model

    path = resolve_model("smollm2-135m").path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH,
                     max_length=LENGTH, max_steps=steps, bf16=False, use_cpu=True,
                     logging_steps=1, save_strategy="no", report_to=[])
    return SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(data),
                      processing_class=tok)


def ours(data, steps: int, out: Path, lora: bool, precision: str):
    from constitutional.train.sft import SFTTrainConfig, make_trainer

    cfg = SFTTrainConfig(revisions="-", lora=lora, precision=precision, batch_size=BATCH,
                         max_length=LENGTH, max_steps=steps, logging_steps=1, save_steps=10**6,
                         learning_rate=2e-5 if not lora else 2e-4)  # 2e-5: TRL default
    return make_trainer(cfg, data, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    import datasets
    import torch

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    data = rows(BATCH * a.steps)
    tmp = Path(tempfile.mkdtemp())
    print(f"SFT, batch {BATCH} x {LENGTH} tokens, {a.steps} steps, torch threads "
          f"{torch.get_num_threads()}", file=sys.stderr)
    results = [
        run("TRL defaults, fp32 full (baseline)", lambda: baseline(data, a.steps, tmp / "b"),
            a.steps),
        run("ours, full, bf16", lambda: ours(data, a.steps, tmp / "f", False, "bf16"), a.steps),
        run("ours, LoRA, bf16", lambda: ours(data, a.steps, tmp / "l", True, "bf16"), a.steps),
        run("ours, LoRA, fp32 (loss reference)",
            lambda: ours(data, a.steps, tmp / "l32", True, "fp32"), a.steps),
    ]
    base = results[0]["s_per_step"]
    print("\n| run | s/step | tokens/s | vs baseline | losses |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['s_per_step']:.2f} | {BATCH * LENGTH / r['s_per_step']:.0f} "
              f"| {base / r['s_per_step']:.2f}x | "
              f"{', '.join(f'{x:.3f}' for x in r['losses'])} |")
    for a_, b_ in ((1, 0), (2, 3)):
        la, lb = results[a_]["losses"], results[b_]["losses"]
        worst = max(abs(x - y) / abs(y) for x, y in zip(la, lb))
        print(f"loss curve, {results[a_]['name']} vs {results[b_]['name']}: largest relative "
              f"difference {100 * worst:.2f}%")


if __name__ == "__main__":
    main()

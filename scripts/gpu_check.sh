#!/usr/bin/env bash
# The GPU path, checked on a machine with one (or more) CUDA GPUs. Not part of `make test`.
#
#   bash scripts/gpu_check.sh            # after `make install`; installs vllm if missing
#   MODEL=smollm2-135m bash scripts/gpu_check.sh
#
# Each check prints one row: vLLM generation (the `auto` backend must pick vllm on CUDA), vLLM
# choice scoring from its prompt log-probabilities against the in-process engine's, one CUDA
# step each of SFT, the preference model and PPO through the CLI, and an FSDP launch on every
# GPU here (2 processes at least; with one GPU the FSDP row is skipped, not failed).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CAI="$PY -m constitutional.cli"
MODEL=${MODEL:-smollm2-135m}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
rows=()

row() {  # name, status, seconds, note
  rows+=("$(printf '| %-28s | %-6s | %6s | %s |' "$1" "$2" "$3" "$4")")
}

timed() {  # name, note, command...
  local name=$1 note=$2
  shift 2
  local t0=$SECONDS
  if "$@" >"$WORK/$name.log" 2>&1; then
    row "$name" ok $((SECONDS - t0)) "$note"
  else
    row "$name" FAIL $((SECONDS - t0)) "see the log below"
    echo "== $name failed; last lines of its log:"; tail -n 15 "$WORK/$name.log"
  fi
}

$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'" || exit 1
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
$PY -c "import vllm" 2>/dev/null || $PY -m pip install -q vllm || echo "vllm did not install"
$CAI models --prepare >/dev/null

# 1. generation: backend auto must be vllm here
printf '{"id": "a", "prompt": "How do I bake bread?"}\n{"id": "b", "prompt": "Name three colors."}\n' \
  > "$WORK/p.jsonl"
timed "vLLM generate (auto)" "backend recorded in the config must be vllm" bash -c "
  $CAI generate --prompts $WORK/p.jsonl --out $WORK/gen -m $MODEL --max-tokens 32 &&
  grep -q 'backend: vllm' $WORK/gen/config.yaml"

# 2. choice scoring through vLLM's prompt log-probs, against the in-process engine on GPU
timed "vLLM score_choices" "max |vLLM - engine| log-prob < 0.05" $PY - "$MODEL" <<'EOF'
import sys
from constitutional.backends import load_backend
from constitutional.config import ModelConfig
name = sys.argv[1]
prompts = ["Human: Is the sky blue?\n\nAssistant: The answer is (", "Q: 2+2?\nA: ("]
options = [["A)", "B)"], ["A)", "B)"]]
a = load_backend(ModelConfig(name=name, backend="vllm")).score_choices(prompts, options)
b = load_backend(ModelConfig(name=name, backend="transformers", device="cuda",
                             dtype="float32")).score_choices(prompts, options)
gap = max(abs(x - y) for r, s in zip(a, b) for x, y in zip(r, s))
print("vllm", a, "engine", b, "gap", gap)
assert gap < 0.05, gap
EOF

# 3. one CUDA step of each trainer, through the CLI
$PY - "$WORK" <<'EOF'
import json, sys
w = sys.argv[1]
rows = [{"id": f"q{i}", "sample": 0, "prompt": f"Bad {i}?", "ok": True,
         "messages": [{"role": "user", "content": f"Bad {i}?"}], "initial_response": "No.",
         "revision": f"A careful answer {i}.", "rounds": [], "flags": []} for i in range(8)]
open(f"{w}/rev.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in rows))
labels = [{"id": f"l{i}", "conversation": [["user", f"q {i}"]], "response_a": "kind",
           "response_b": "rude", "label": 0.9} for i in range(8)]
open(f"{w}/labels.jsonl", "w").write("".join(json.dumps(r) + "\n" for r in labels))
EOF
timed "SFT step (CUDA)" "cai train-sft --max-steps 2" \
  $CAI train-sft --revisions "$WORK/rev.jsonl" --out "$WORK/t" -m "$MODEL" --max-steps 2
timed "PM step (CUDA)" "cai train-pm --max-steps 2" \
  $CAI train-pm --labels "$WORK/labels.jsonl" --out "$WORK/t" -m "$MODEL" --max-steps 2 \
  eval_fraction=0
timed "PPO step (CUDA)" "run_ppo, 1 iteration, the PM above as reward" $PY - "$WORK" "$MODEL" <<'EOF'
import sys
from constitutional.train.ppo import PPOConfig
from constitutional.train.ppo_run import run_ppo
w, name = sys.argv[1], sys.argv[2]
cfg = PPOConfig(model={"name": name}, prompts="bundled:redteam", limit=10, steps=1,
                batch_size=4, mini_batch_size=2, max_tokens=16, eval_every=1,
                snapshots=False, reward_model=f"{w}/t/pm/model")
r = run_ppo(cfg, f"{w}/ppo")
assert r.output.is_dir(), r
EOF

# 4. FSDP over the GPUs here
if [ "$GPUS" -ge 2 ]; then
  timed "FSDP launch ($GPUS GPUs)" "train-sft --full, sharded" \
    $PY -m accelerate.commands.accelerate_cli launch --config_file configs/accelerate/fsdp.yaml \
    --num_processes "$GPUS" -m constitutional.cli train-sft --revisions "$WORK/rev.jsonl" \
    --out "$WORK/fsdp" -m "$MODEL" --full --max-steps 2
else
  row "FSDP launch" skip 0 "one GPU: FSDP needs 2 or more processes"
fi

echo
echo "GPU check on $($PY -c "import torch; print(torch.cuda.get_device_name(0))") x $GPUS, model $MODEL"
echo "| check                        | status | time s | note |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"

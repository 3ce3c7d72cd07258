"""PPO's pieces against hand-computed numbers, and a few PPO steps that raise a toy reward."""

from __future__ import annotations

import math

import pytest
import torch

from constitutional.train.losses import (AdaptiveKLController, clipped_policy_loss, gae,
                                         kl_penalty, token_rewards, value_loss, whiten)


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 0.0]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # t2: 2 + 0 - 0 = 2; t1: 0 + 0 - 1 + 0.5*2 = 0; t0: 1 + 1 - 0.5 + 0.5*0 = 1.5
    assert adv.tolist() == [[1.5, 0.0, 2.0]]
    assert ret.tolist() == [[2.0, 1.0, 2.0]]
    # padding after the end: no reward, no value, no bootstrap from it
    adv, _ = gae(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.5, 1.0, 9.0]]),
                 torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=1.0)
    # t1: 2 + 0.9*0 - 1 = 1; t0: 1 + 0.9*1 - 0.5 + 0.9*1*1 = 2.3
    assert adv[0].tolist() == pytest.approx([2.3, 1.0, 0.0])


def test_clipped_policy_loss_by_hand():
    logp = torch.log(torch.tensor([[1.5, 1.5]]))
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    loss, frac = clipped_policy_loss(logp, old, adv, torch.ones(1, 2), clip=0.2)
    # A=+1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped); A=-1: max(1.5, 1.2) = 1.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert frac.item() == pytest.approx(0.5)
    # gradient only flows where the ratio is not clipped
    lp = logp.clone().requires_grad_(True)
    clipped_policy_loss(lp, old, adv, torch.ones(1, 2))[0].backward()
    assert lp.grad[0, 0].item() == 0.0 and lp.grad[0, 1].item() == pytest.approx(1.5 / 2)


def test_value_loss_kl_rewards_whiten_and_adaptive_kl_by_hand():
    v = value_loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]]),
                   torch.ones(1, 1), clip=0.2)
    assert v.item() == pytest.approx(0.5 * (1.2 - 3.0) ** 2)      # the clipped error is larger
    assert value_loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0]]),
                      torch.ones(1, 1), clip=None).item() == pytest.approx(0.5)
    d = torch.tensor([[0.5]])
    assert kl_penalty(d, torch.zeros(1, 1), "k1").item() == 0.5
    assert kl_penalty(d, torch.zeros(1, 1), "k3").item() == pytest.approx(math.exp(-0.5) - 0.5)
    r = token_rewards(torch.tensor([2.0]), torch.tensor([[0.1, 0.2, 0.3]]),
                      torch.tensor([[1.0, 1.0, 0.0]]), kl_coef=0.5)
    assert r[0].tolist() == pytest.approx([-0.05, 1.9, 0.0])
    w = whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert w[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert ctl.update(12.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    assert ctl.update(6.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))   # on target


def toy_trainer(path, lr, **kw):
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer)

    from constitutional.train.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    cfg = PPOConfig(learning_rate=lr, batch_size=16, mini_batch_size=8, max_tokens=12,
                    precision="fp32", **kw)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if cfg.lora:
        policy = cfg.lora_settings.wrap(policy, "CAUSAL_LM")
    value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                               dtype=torch.float32)

    def reward(convs, texts):     # toy: the share of the letter "e" in the answer
        return [10 * t.count("e") / max(1, len(t)) for t in texts]
    return PPOTrainer(cfg, policy, tok, value, reward)


def test_ppo_steps_raise_a_toy_reward_on_a_tiny_model(tiny_llama):
    trainer = toy_trainer(tiny_llama, 3e-4, lora=False, kl_coef=0.0)
    convs = [[{"role": "user", "content": f"tell me {i}"}] for i in range(16)]
    logs = [trainer.step(convs, seed=k) for k in range(25)]
    first = sum(r["reward"] for r in logs[:5]) / 5
    last = sum(r["reward"] for r in logs[-5:]) / 5
    assert last > first + 0.2, [round(r["reward"], 3) for r in logs]
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-5)       # starts at the reference
    assert all(r["kl"] > -0.5 for r in logs)                   # scored on the sampled ids
    for key in ("entropy", "value_loss", "clip_frac", "pg_loss", "kl_coef"):
        assert all(math.isfinite(r[key]) for r in logs)


def test_normalized_rewards_weigh_kl_by_the_score_std_in_pm_units(tiny_llama, monkeypatch):
    """normalize_rewards keeps the scores as the PM gives them (the value model starts from
    the PM, in its units) and scales the KL coefficient by the scores' running std."""
    from constitutional.train import losses

    trainer = toy_trainer(tiny_llama, 1e-4, lora=False, kl_coef=0.2, normalize_rewards=True)
    scores = [1.0, 3.0] * 8                    # std (n - 1) = sqrt(16 / 15 * 1) over 16 scores
    trainer.reward_fn = lambda convs, texts: scores
    seen = []
    real = losses.token_rewards
    monkeypatch.setattr(losses, "token_rewards",
                        lambda score, kl, mask, coef: seen.append((score, coef))
                        or real(score, kl, mask, coef))
    convs = [[{"role": "user", "content": f"hi {i}"}] for i in range(16)]
    row = trainer.step(convs, seed=0)
    score, coef = seen[0]
    assert score.tolist() == scores
    assert coef == pytest.approx(0.2 * (16 / 15) ** 0.5)
    assert row["kl_coef"] == pytest.approx(0.2) and row["reward"] == pytest.approx(2.0)


def test_ppo_lora_reference_is_the_adapter_free_policy(tiny_llama):
    trainer = toy_trainer(tiny_llama, 1e-2, lora=True, kl_coef=0.1, adaptive_kl=True,
                          kl_target=0.5, kl_horizon=100)
    assert trainer.ref is None                                  # no second copy
    convs = [[{"role": "user", "content": f"hi {i}"}] for i in range(16)]
    logs = [trainer.step(convs, seed=k) for k in range(4)]
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-5)       # LoRA B starts at zero
    assert logs[-1]["kl"] != pytest.approx(0.0, abs=1e-4)
    assert logs[-1]["kl_coef"] != 0.1                            # adaptive controller moved


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_grpo_and_rloo_with_a_reward_function_run_and_save_a_model(tmp_path, tiny_llama,
                                                                   method):
    import json

    from constitutional.train.grpo import GRPOTrainConfig, run_grpo
    from conftest import write_jsonl

    write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"say {i}"} for i in range(8)])
    seen = []

    def reward(prompts, completions, **_):
        texts = [c[-1]["content"] for c in completions]
        seen.append(len(texts))
        return [t.count("e") / max(1, len(t)) for t in texts]

    cfg = GRPOTrainConfig(model={"name": str(tiny_llama)}, prompts=str(tmp_path / "p.jsonl"),
                          num_generations=4, batch_size=8, max_tokens=8,
                          max_steps=2, precision="fp32", learning_rate=1e-3)
    result = run_grpo(cfg, tmp_path / "run", log=lambda m: None, reward_fn=reward,
                      method=method)
    assert (result.output / "model.safetensors").is_file()
    assert seen and all(n % 4 == 0 for n in seen)              # groups of num_generations
    hist = json.loads((tmp_path / "run/rl/log_history.json").read_text())
    assert any(k.startswith("reward") for h in hist for k in h)
    manifest = json.loads((tmp_path / "run/rl/manifest.json").read_text())
    assert manifest["config"]["method"] == method
    assert json.loads((result.output / "cai_train.json").read_text())["kind"] == method


def test_no_tracker_means_no_logging_calls(tmp_path):
    from constitutional.rundir import RunDir
    from constitutional.train.ppo import PPOConfig
    from constitutional.train.ppo_run import trackers

    class NoAccelerator:
        def __getattr__(self, name):
            raise AssertionError(f"called {name} without report_to")
    write = trackers(NoAccelerator(), PPOConfig(), RunDir(tmp_path))
    assert write({"step": 1, "reward": 1.0}, "train") is None


def test_whiten_across_processes_uses_the_whole_batch():
    """Each process's share, whitened with sums over both shares (what the all-reduce gives),
    equals the whole batch whitened at once."""
    import torch

    torch.manual_seed(0)
    x, mask = torch.randn(4, 5), (torch.rand(4, 5) > 0.3).float()
    whole = whiten(x, mask)
    (xa, xb), (ma, mb) = x.chunk(2), mask.chunk(2)
    mean = (x * mask).sum() / mask.sum()
    others = iter([mb.sum(), (xb * mb).sum(), (((xb - mean) ** 2) * mb).sum()])
    share = whiten(xa, ma, total=lambda t: t + next(others))
    assert torch.allclose(share, whole[:2], atol=1e-6)
    assert not torch.allclose(whiten(xa, ma), whole[:2], atol=1e-3)   # local stats differ


def test_ppo_reads_log_probs_at_the_sampling_temperature(tiny_llama):
    """Rollouts sampled at temperature T come from softmax(logits / T): the ratio and the KL
    must use that distribution, not the untempered one."""
    trainer = toy_trainer(tiny_llama, 1e-3, lora=False, temperature=0.5)
    convs = [[{"role": "user", "content": f"hi {i}"}] for i in range(3)]
    _, b = trainer.rollout(convs, seed=0)
    logp, entropy = trainer.logprobs(trainer.policy, b, with_entropy=True)
    Q, T = b["Q"], b["mask"].shape[1]
    with torch.no_grad():
        logits = trainer.policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                position_ids=b["position_ids"]).logits[:, Q - 1:Q - 1 + T]
    want = torch.log_softmax(logits.float() / 0.5, -1)
    ids = b["input_ids"][:, Q:Q + T, None]
    assert torch.allclose(logp, want.gather(-1, ids).squeeze(-1), atol=1e-4)
    assert torch.allclose(entropy, -(want.exp() * want).sum(-1), atol=1e-4)
    untempered = torch.log_softmax(logits.float(), -1).gather(-1, ids).squeeze(-1)
    assert not torch.allclose(logp, untempered, atol=1e-2)

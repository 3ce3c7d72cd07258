"""Training losses as pure functions over tensors, each with its shapes and its math.

They take tensors and return tensors; no model, no trainer. Tests check them against numbers
computed by hand, and the trainers call them.
"""

from __future__ import annotations


def completion_nll(logits, targets):
    """Summed negative log-likelihood of the completion tokens, and how many there are.

    logits:  [N, V] next-token logits at the N scored positions (any float dtype; the
             log-softmax runs in fp32 so bf16 logits do not round the loss)
    targets: [N] the token that follows each position; -100 marks a position not scored
    returns: (loss_sum [], n_scored [])   loss_sum = -sum_i log softmax(logits_i)[targets_i]
    """
    import torch.nn.functional as F

    loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    return loss_sum, (targets != -100).sum()


def soft_pairwise_loss(reward_a, reward_b, p):
    """The preference model's pairwise loss on soft labels, mean over the batch.

    reward_a, reward_b: [B] scalar scores of the two answers
    p:                  [B] probability that answer a is the better one (1.0: a hard label)
    returns:            []  mean of -[p log sigmoid(ra - rb) + (1 - p) log sigmoid(rb - ra)]

    With p = 1 it is the usual -log sigmoid(r_good - r_bad). Its gradient with respect to
    (ra - rb) is sigmoid(ra - rb) - p: it pulls the PM's own probability toward the label.
    """
    import torch.nn.functional as F

    d = (reward_a - reward_b).float()
    p = p.to(d.dtype)
    return -(p * F.logsigmoid(d) + (1.0 - p) * F.logsigmoid(-d)).mean()


# -- PPO (RL-CAI) --------------------------------------------------------------------------
# Shapes: B rollouts, T response tokens; `mask` [B, T] is 1 on real response tokens, 0 on
# padding after the end. Token t's action is the t-th response token.

def masked_mean(x, mask, dim=None):
    """Mean of x over the positions where mask is 1 (all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x, mask, shift_mean: bool = True, total=None):
    """(x - mean) / std over masked positions; with shift_mean=False the mean is kept.

    total: sums a tensor over processes (an all-reduce), so that each process whitens its
    share of a batch with the statistics of the whole batch; None on one process.
    """
    total = total or (lambda t: t)
    n = total(mask.sum()).clamp(min=1)                                  # [] tokens
    mean = total((x * mask).sum()) / n
    var = total((((x - mean) ** 2) * mask).sum()) / n
    out = (x - mean) * (var + 1e-8).rsqrt()
    return (out if shift_mean else out + mean) * mask


def kl_penalty(logp, ref_logp, kind: str = "k1"):
    """Per-token KL estimate between the policy and the reference, from sampled tokens.

    logp, ref_logp: [B, T] log-probabilities of the sampled tokens
    k1: logp - ref_logp (unbiased, can be negative per token)
    k3: exp(ref - logp) - 1 - (ref - logp) (non-negative, lower variance)
    """
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k3":
        return (-d).exp() - 1 + d
    raise ValueError(f"unknown KL estimator {kind!r}")


def token_rewards(score, kl, mask, kl_coef: float):
    """RL-CAI's reward per token: -kl_coef * KL at every token, plus the preference model's
    score on the last real token.

    score: [B] PM scores; kl: [B, T]; returns [B, T]
    """
    import torch

    rewards = -kl_coef * kl * mask
    last = (mask.sum(1) - 1).clamp(min=0).long()                      # [B]
    rewards[torch.arange(len(score)), last] += score
    return rewards


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalized advantage estimation (Schulman et al. 2016), backwards over tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t   (V after the last real token is 0)
    A_t     = delta_t + gamma * lam * A_{t+1}
    rewards, values, mask: [B, T] -> (advantages [B, T], returns = A + V [B, T])
    """
    import torch

    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    values = values * mask
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, adv + values


def clipped_policy_loss(logp, old_logp, advantages, mask, clip: float = 0.2):
    """PPO's clipped surrogate: mean over tokens of max(-A r, -A clip(r, 1-e, 1+e)).

    r = exp(logp - old_logp); all [B, T]. Returns (loss [], fraction of tokens clipped [])."""
    import torch

    ratio = (logp - old_logp).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_frac


def value_loss(values, old_values, returns, mask, clip: float | None = 0.2):
    """0.5 * squared error to the returns, with the value change clipped to +-clip around
    the rollout's values (the larger of the clipped and unclipped errors); all [B, T]."""
    import torch

    err = (values - returns) ** 2
    if clip is not None:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.maximum(err, (v_clipped - returns) ** 2)
    return 0.5 * masked_mean(err, mask)


class AdaptiveKLController:
    """Ziegler et al. (2019): move the KL coefficient so the measured KL tracks a target.

    coef *= 1 + clip((kl / target - 1), -0.2, 0.2) * n_steps / horizon
    """

    def __init__(self, init: float, target: float, horizon: int = 10000):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        err = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + err * n_steps / self.horizon
        return self.value


# -- DPO with soft labels ------------------------------------------------------------------

def soft_dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, p,
                  beta: float):
    """DPO's loss with a soft label per pair (label smoothing epsilon = 1 - p), mean over B.

    *_logps: [B] summed log-probabilities of each answer under the policy / the reference
    p:       [B] probability that `chosen` is better (1.0: plain DPO)
    D = (log pi_c - log ref_c) - (log pi_r - log ref_r);
    loss = -[p log sigmoid(beta D) + (1 - p) log sigmoid(-beta D)]
    It is the preference model's soft pairwise loss on the implicit rewards beta * log-ratio.
    """
    return soft_pairwise_loss(beta * (chosen_logps - ref_chosen_logps),
                              beta * (rejected_logps - ref_rejected_logps), p)

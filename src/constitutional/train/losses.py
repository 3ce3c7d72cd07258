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

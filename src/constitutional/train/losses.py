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

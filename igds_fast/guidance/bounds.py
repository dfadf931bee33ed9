"""The quantities the guidance terms are built from (docs/method.md says what each bounds). Nats.

Prototype term: the Barber-Agakov bound I(X;Y) >= H(Y) + E[log q(y|x)], which holds for any
classifier q (so ascending it can also be done by fooling q). Diversity term: a nearest-neighbour
repulsion of critic features (``soft_nearest_similarity``); it is not a bound on H(X|Y).
"""

from __future__ import annotations

import torch


def label_entropy(labels: torch.Tensor, num_classes: int) -> float:
    """Empirical H(Y) of integer labels, in nats."""
    p = torch.bincount(labels.long(), minlength=num_classes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def barber_agakov(log_q: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Lower bound on I(X;Y): H(Y) + mean log q(y|x). Never exceeds H(Y) <= ln K."""
    return label_entropy(labels, num_classes) + float(log_q.double().mean())


def class_log_prob(logits: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """log q(y|x) per sample, as a one-hot product (its gradient needs no scatter op)."""
    onehot = (torch.arange(logits.shape[1], device=logits.device)[None] == class_index[:, None]).to(logits.dtype)
    return (torch.log_softmax(logits, dim=-1) * onehot).sum(-1)


def soft_nearest_similarity(
    z: torch.Tensor,
    labels: torch.Tensor,
    memory: torch.Tensor | None = None,
    memory_mask: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Per sample, a soft maximum (temperature x logsumexp) of its cosine similarity to the other
    same-class samples of the batch and to the memory rows of its class: near 1 when it has a
    near-duplicate, lower the farther its nearest neighbours are. 0 where it has no neighbour.

    z: (B, D) L2-normalised features; memory: (M, D) features of the class's earlier final samples
    (constants); memory_mask: (B, M), 1 where row m belongs to sample b's class. Not an entropy
    bound: a nearest-neighbour repulsion whose descent spreads a class's samples apart.
    """
    n = len(z)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(n, dtype=torch.bool, device=z.device)
    sims, valid = z @ z.T, same
    if memory is not None and memory_mask is not None:
        sims = torch.cat([sims, z @ memory.to(z.dtype).T], dim=1)
        valid = torch.cat([valid, memory_mask > 0], dim=1)
    scaled = torch.where(valid, sims / temperature, torch.full_like(sims, -1e4))
    soft_max = temperature * torch.logsumexp(scaled, dim=1)
    return torch.where(valid.any(1), soft_max, torch.zeros_like(soft_max))

"""Our information bounds (see docs/method.md). All values are in nats.

Prototype term, Barber-Agakov:   I(X;Y) >= H(Y) + E[log q(y|x)]  for any classifier q.
Contextual term, collision entropy: H(X|Y) >= H_2(X|Y) = -E_y log E[k(x, x') | y], estimated per
class with a Gaussian kernel on critic features over pairs of distinct samples.
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


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Expanded form keeps it to matmuls; clamp guards the tiny negatives of cancellation.
    return (a.pow(2).sum(-1)[:, None] + b.pow(2).sum(-1)[None] - 2 * a @ b.T).clamp_min(0)


def collision_entropy(
    z: torch.Tensor,
    labels: torch.Tensor,
    sigma: torch.Tensor,
    memory: torch.Tensor | None = None,
    memory_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample H2 estimate of its class: -log(mean kernel over the class's distinct pairs).

    z: (B, D) features; labels: (B,) classes; sigma: (B,) kernel width of each sample's class.
    memory: (M, D) features of the class's earlier samples (constants) and memory_mask (B, M),
    1 where memory item m belongs to sample b's class. Pairs among the batch and between the
    batch and the memory count; memory-memory pairs carry no gradient and are left out (any set
    of distinct pairs estimates the same expected kernel value).

    Returns (h2 (B,), pair_count (B,)); h2 is 0 where a class has no pair.
    """
    same = (labels[:, None] == labels[None, :]).to(z.dtype)
    off_diag = same * (1 - torch.eye(len(z), dtype=z.dtype, device=z.device))
    inv2s2 = 1.0 / (2 * sigma.to(z.dtype) ** 2)
    k_bb = torch.exp(-_sq_dists(z, z) * inv2s2[:, None])
    row_sum = (off_diag * k_bb).sum(1)
    row_cnt = off_diag.sum(1)
    if memory is not None and memory_mask is not None:
        k_bm = torch.exp(-_sq_dists(z, memory.to(z.dtype)) * inv2s2[:, None])
        m = memory_mask.to(z.dtype)
        row_sum = row_sum + 2 * (m * k_bm).sum(1)
        row_cnt = row_cnt + 2 * m.sum(1)
    total, count = same @ row_sum, same @ row_cnt  # sums over each sample's class
    h2 = torch.where(count > 0, -torch.log(total.clamp_min(1e-30) / count.clamp_min(1)), torch.zeros_like(total))
    return h2, count


def knn_entropy(
    z: torch.Tensor,
    labels: torch.Tensor,
    memory: torch.Tensor | None = None,
    memory_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kozachenko-Leonenko (k=1) entropy estimate per sample's class, up to the class-size
    constant psi(n) - psi(1) + log V_d: d * mean log(nearest-neighbour distance). Eager option."""
    d = z.shape[1]
    big = torch.finfo(z.dtype).max / 4
    same = labels[:, None] == labels[None, :]
    dist = _sq_dists(z, z).masked_fill(~same | torch.eye(len(z), dtype=torch.bool, device=z.device), big)
    if memory is not None and memory_mask is not None:
        dist = torch.cat([dist, _sq_dists(z, memory).masked_fill(memory_mask <= 0, big)], dim=1)
    nn_d2 = dist.min(1).values
    valid = nn_d2 < big
    log_eps = 0.5 * torch.log(nn_d2.clamp_min(1e-12))
    per_sample = torch.where(valid, d * log_eps, torch.zeros_like(log_eps))
    same_f = same.to(z.dtype)
    return (same_f @ per_sample) / same_f.sum(1)


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

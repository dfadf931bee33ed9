"""What the judge measures on a set, as pure functions of features and pixels.

- precision, recall, density, coverage (Kynkäänniemi et al. 2019; Naeem et al. 2020): k-NN manifolds
  (k = ``K``) of feature vectors;
- saturation: the share of uint8 values at exactly 0 or 255;
- the mean pairwise L2 distance of feature vectors (within one class: the within-class distance).
"""

from __future__ import annotations

import torch

K = 5  # the papers' k for the k-NN manifolds


def knn_radii(x: torch.Tensor, k: int = K, chunk: int = 1024) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row (the radius of its k-NN ball)."""
    if len(x) <= k:
        raise ValueError(f"a k-NN radius with k = {k} needs more than {k} points, got {len(x)}")
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # the (k+1)-th smallest: the row's distance to itself (0) is the first
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def prdc(
    real: torch.Tensor, fake: torch.Tensor, k: int = K, real_radii: torch.Tensor | None = None
) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density, coverage (Naeem et al. 2020).

    With B(x, r) the closed ball and NND_k(x) the distance from x to its k-th nearest neighbour in
    its own set (real: N points X, fake: M points Y):
    precision = 1/M sum_j 1[Y_j in some B(X_i, NND_k(X_i))];  recall = 1/N sum_i 1[X_i in some
    B(Y_j, NND_k(Y_j))];  density = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))];  coverage =
    1/N sum_i 1[some Y_j in B(X_i, NND_k(X_i))]. ``real_radii`` reuses NND_k of ``real``.
    """
    rr = knn_radii(real, k) if real_radii is None else real_radii
    fr = knn_radii(fake, k)
    d = torch.cdist(real, fake)  # (N, M)
    in_real_balls = d <= rr[:, None]
    return {
        "precision": float(in_real_balls.any(dim=0).double().mean()),
        "recall": float((d <= fr[None, :]).any(dim=1).double().mean()),
        "density": float(in_real_balls.sum(dim=0).double().mean() / k),
        "coverage": float((d.min(dim=1).values <= rr).double().mean()),
    }


def mean_pairwise_distance(x: torch.Tensor) -> float | None:
    """Mean L2 distance over the pairs i < j of the rows of ``x``; None for fewer than 2 rows."""
    if len(x) < 2:
        return None
    return float(torch.pdist(x.double()).mean())


def saturation(images: torch.Tensor) -> float:
    """Share of values at exactly 0 or 255 in uint8 images (any shape)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"saturation is defined on uint8 images, got {images.dtype}")
    return float(((images == 0) | (images == 255)).double().mean())

"""Map WNIDs to a denoiser's class labels."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from ..subsets import class_info


def class_labels(denoiser: nn.Module, wnids: list[str]) -> list[int]:
    """Our checkpoints name their classes (label k = wnids[k]); other models with 1000 classes
    are ImageNet-1k models (label = ImageNet-1k index)."""
    config = getattr(denoiser, "config", None)
    own = list(getattr(config, "wnids", []) or [])
    if own:
        missing = [w for w in wnids if w not in own]
        if missing:
            raise UserError(
                f"class {missing[0]} is not in the model (it knows {len(own)} classes: {', '.join(own[:4])}, ...)"
            )
        return [own.index(w) for w in wnids]
    if int(denoiser.num_classes) != 1000:
        raise UserError(
            f"the model has {denoiser.num_classes} unnamed classes; only ImageNet-1k models (1000 classes) "
            "or checkpoints that name their classes can be addressed by WNID"
        )
    return [class_info(w).imagenet_index for w in wnids]

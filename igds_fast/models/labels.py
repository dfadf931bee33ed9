"""Map WNIDs to a denoiser's class labels."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from ..subsets import class_info


def model_class_names(denoiser: nn.Module) -> list[str]:
    """The WNIDs our checkpoints name their classes with (label k = names[k]); [] for other models."""
    return list(getattr(getattr(denoiser, "config", None), "wnids", []) or [])


def labels_for_wnids(own: list[str], num_classes: int, wnids: list[str]) -> list[int]:
    """Labels of ``wnids`` for a model whose classes are named ``own``; a model with unnamed
    classes must be an ImageNet-1k model (label = ImageNet-1k index)."""
    if own:
        missing = [w for w in wnids if w not in own]
        if missing:
            raise UserError(
                f"class {missing[0]} is not in the model (it knows {len(own)} classes: {', '.join(own[:4])}, ...)"
            )
        return [own.index(w) for w in wnids]
    if num_classes != 1000:
        raise UserError(
            f"the model has {num_classes} unnamed classes; only ImageNet-1k models (1000 classes) "
            "or checkpoints that name their classes can be addressed by WNID"
        )
    infos = [class_info(w) for w in wnids]
    unnamed = [c.wnid for c in infos if c.imagenet_index < 0]
    if unnamed:
        raise UserError(
            f"class '{unnamed[0]}' is named by folder, not by WNID: an ImageNet-1k model has no such class; "
            "use a model trained on this dataset (train-dit)"
        )
    return [c.imagenet_index for c in infos]


def class_labels(denoiser: nn.Module, wnids: list[str]) -> list[int]:
    return labels_for_wnids(model_class_names(denoiser), int(denoiser.num_classes), wnids)


def model_labels(classes: list[int | str], denoiser: nn.Module) -> list[int]:
    """Labels as given, and WNIDs through the model's class names (or ImageNet-1k indices)."""
    return [c if isinstance(c, int) else class_labels(denoiser, [c])[0] for c in classes]

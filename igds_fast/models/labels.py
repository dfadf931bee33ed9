"""Map WNIDs to a denoiser's class labels."""

from __future__ import annotations

import difflib

from torch import nn

from ..errors import UserError
from ..names import WNID
from ..subsets import class_info, did_you_mean


def _imagenet_name(wnid: str) -> str | None:
    if not WNID.fullmatch(wnid):
        return None
    try:
        return class_info(wnid).name
    except UserError:
        return None


def _known_as(wnid: str) -> str:
    """'n01440764 tench' for an ImageNet WNID, else the class's own name."""
    name = _imagenet_name(wnid)
    return f"{wnid} {name}" if name else wnid


def _close_in(wnid: str, own: list[str]) -> str:
    """The suffix "; close: ..." naming the model's classes whose name is close to ``wnid``'s, or ""."""
    by_name = {(_imagenet_name(o) or o).casefold(): o for o in own}
    query = (_imagenet_name(wnid) or wnid).casefold()
    close = [_known_as(by_name[k]) for k in difflib.get_close_matches(query, by_name, n=3, cutoff=0.6)]
    return f"; close: {', '.join(close)}" if close else ""


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
                f"class {missing[0]} is not in the model ("
                + (f"{name}; " if (name := _imagenet_name(missing[0])) else "")
                + f"it knows {len(own)} classes: "
                f"{', '.join(_known_as(o) for o in own[:4])}{', ...' if len(own) > 4 else ''})"
                + _close_in(missing[0], own)
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
            "use a model trained on this dataset (train-dit)" + did_you_mean(unnamed[0])
        )
    return [c.imagenet_index for c in infos]


def class_labels(denoiser: nn.Module, wnids: list[str]) -> list[int]:
    return labels_for_wnids(model_class_names(denoiser), int(denoiser.num_classes), wnids)


def model_labels(classes: list[int | str], denoiser: nn.Module) -> list[int]:
    """Labels as given, and WNIDs through the model's class names (or ImageNet-1k indices)."""
    return [c if isinstance(c, int) else class_labels(denoiser, [c])[0] for c in classes]

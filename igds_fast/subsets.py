"""ImageNet-1k class subsets (ImageNette, ImageWoof, ImageIDC, ImageNet-100, ImageNet-1k), and classes by name.

Labels are always mapped through the WNID: ``ImageFolder`` sorts classes by WNID, while the
papers' class files (and this list) keep their own order, and a 1000-class DiT is conditioned on
the ImageNet-1k index. A dataset that is not ImageNet (CIFAR-10's ``airplane/``, ...) names its
classes by folder name: such a class has no ImageNet-1k index, and only models trained on it know it.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import UserError
from .names import CLASS_NAME, WNID

NO_IMAGENET_INDEX = -1


@dataclass(frozen=True)
class ClassInfo:
    wnid: str  # the class's key: an ImageNet WNID, or the class folder's name
    imagenet_index: int  # NO_IMAGENET_INDEX for a class named by folder
    name: str

    @property
    def seed_key(self) -> int:
        """The class's term in seed rules: its ImageNet-1k index, or for a named class a stable hash
        of the name above 1000 (never an ImageNet index)."""
        if self.imagenet_index >= 0:
            return self.imagenet_index
        return 1000 + zlib.crc32(self.wnid.encode()) % 1_000_000


@lru_cache(maxsize=1)
def _table() -> dict[str, list[ClassInfo]]:
    raw = json.loads(resources.files("igds_fast.data").joinpath("subsets.json").read_text())
    return {k: [ClassInfo(*e) for e in v] for k, v in raw.items() if not k.startswith("_")}


def subset(name: str) -> list[ClassInfo]:
    """The classes of a named subset, in the papers' order."""
    table = _table()
    if name not in table:
        raise UserError(f"unknown subset '{name}': choose one of {', '.join(table)}")
    return list(table[name])


@lru_cache(maxsize=1)
def _by_wnid() -> dict[str, ClassInfo]:
    return {c.wnid: c for c in _table()["imagenet1k"]}


def class_info(wnid: str) -> ClassInfo:
    """A WNID's ImageNet-1k entry, or a class named by its folder (``airplane``)."""
    if WNID.fullmatch(wnid):
        try:
            return _by_wnid()[wnid]
        except KeyError:
            raise UserError(f"unknown WNID '{wnid}': expected an ImageNet-1k id like n01440764") from None
    if CLASS_NAME.fullmatch(wnid):
        return ClassInfo(wnid, NO_IMAGENET_INDEX, wnid)
    raise UserError(
        f"'{wnid}' is neither a WNID (n01440764) nor a class folder name (letters, digits, '_', '.', '+', '-')"
    )


def resolve_classes(
    subset_name: str | None = None, wnids: str | list[str] | None = None, classes_file: str | Path | None = None
) -> list[ClassInfo]:
    """Classes from exactly one of: a subset name, comma-separated WNIDs (or class folder names), a file with
    one a line."""
    given = [x is not None for x in (subset_name, wnids, classes_file)]
    if sum(given) > 1:
        raise UserError("give only one of --subset, --classes, --classes-file")
    if classes_file is not None:
        path = Path(classes_file)
        if not path.is_file():
            raise UserError(f"classes file '{path}' does not exist")
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"classes file '{path}' is not a text file of WNIDs, one a line ({e})") from None
        wnids = [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#")]
    if wnids is not None:
        items = wnids.split(",") if isinstance(wnids, str) else list(wnids)
        items = [w.strip() for w in items if w.strip()]
        if not items:
            raise UserError("no classes given: pass WNIDs like n01440764,n02102040")
        if len(set(items)) != len(items):
            raise UserError("a class is listed twice in --classes")
        return [class_info(w) for w in items]
    return subset(subset_name or "imagenette")

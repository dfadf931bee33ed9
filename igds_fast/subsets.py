"""ImageNet-1k class subsets (ImageNette, ImageWoof, ImageIDC, ImageNet-100, ImageNet-1k), and classes by name.

Labels are always mapped through the WNID: ``ImageFolder`` sorts classes by WNID, while the
papers' class files (and this list) keep their own order, and a 1000-class DiT is conditioned on
the ImageNet-1k index. A class is given (``--classes``, a classes file) by its WNID or by its
ImageNet-1k name as ``data/subsets.json`` spells it, in any case (``tench``, ``"English springer"``):
a name stands for its WNID, so both give the same images. A dataset that is not ImageNet (CIFAR-10's
``airplane/``, ...) names its classes by folder name: such a class has no ImageNet-1k index, and
only models trained on it know it.
"""

from __future__ import annotations

import difflib
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


@lru_cache(maxsize=1)
def _by_name() -> dict[str, list[ClassInfo]]:
    """ImageNet-1k classes by their name, case-folded (three names are shared by two classes each)."""
    out: dict[str, list[ClassInfo]] = {}
    for c in _table()["imagenet1k"]:
        out.setdefault(_fold(c.name), []).append(c)
    return out


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


def close_classes(text: str, n: int = 3) -> list[str]:
    """ImageNet-1k classes whose name (or WNID) is close to ``text``, as "name (wnid)"."""
    names = difflib.get_close_matches(_fold(text), list(_by_name()), n=n, cutoff=0.6)
    wnids = difflib.get_close_matches(text.strip(), list(_by_wnid()), n=n, cutoff=0.8)
    found = [c for name in names for c in _by_name()[name]] + [_by_wnid()[w] for w in wnids]
    return list(dict.fromkeys(f"{c.name} ({c.wnid})" for c in found))[:n]


def did_you_mean(text: str) -> str:
    """The suffix "; close: tench (n01440764), ..." for an error message, or "" when nothing is close."""
    close = close_classes(text)
    return f"; close: {', '.join(close)}" if close else ""


def named_class(text: str) -> ClassInfo | None:
    """The ImageNet-1k class of this name (any case), None if no class has it; a UserError naming the
    WNIDs when two classes share it."""
    found = _by_name().get(_fold(text))
    if not found:
        return None
    if len(found) > 1:
        which = " or ".join(f"{c.wnid} ({c.name}, index {c.imagenet_index})" for c in found)
        raise UserError(
            f"class name '{text.strip()}' is shared by {len(found)} ImageNet classes: give the WNID, {which}"
        )
    return found[0]


def class_by_name(text: str) -> ClassInfo:
    """A class as the user gives it: a WNID, an ImageNet-1k class name (any case), or a class folder's name."""
    item = text.strip()
    if WNID.fullmatch(item):
        return class_info(item)
    named = named_class(item)
    if named is not None:
        return named
    if CLASS_NAME.fullmatch(item):
        return class_info(item)  # a dataset's own class folder; unknown names are refused by the model
    raise UserError(
        f"unknown class '{item}': give a WNID (n01440764), an ImageNet class name (tench) or a class folder name"
        + did_you_mean(item)
    )


def _classes_file_item(line: str) -> str:
    """A classes file's line: a WNID (anything after it is a comment), a class name, or a folder name."""
    first = line.split()[0]
    if WNID.fullmatch(first) or named_class(first) is not None:
        return first
    if named_class(line) is not None:
        return line.strip()
    return first


def resolve_classes(
    subset_name: str | None = None, wnids: str | list[str] | None = None, classes_file: str | Path | None = None
) -> list[ClassInfo]:
    """Classes from exactly one of: a subset name, comma-separated classes (WNIDs, ImageNet class names or class
    folder names), a file with one a line."""
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
        wnids = [_classes_file_item(ln) for ln in lines if ln.strip() and not ln.startswith("#")]
    if wnids is not None:
        items = wnids.split(",") if isinstance(wnids, str) else list(wnids)
        items = [w.strip() for w in items if w.strip()]
        if not items:
            raise UserError("no classes given: pass WNIDs like n01440764,n02102040 or names like tench")
        infos = [class_by_name(w) for w in items]
        twice = [c for i, c in enumerate(infos) if c.wnid in {d.wnid for d in infos[:i]}]
        if twice:
            raise UserError(f"class {twice[0].wnid} ({twice[0].name}) is listed twice in --classes")
        return infos
    return subset(subset_name or "imagenette")

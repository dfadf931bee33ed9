"""A set's dataset card: ``README.md`` at its root, in the Hugging Face dataset-card form (a YAML
header, then Markdown): what the set is, how to load it, its two label spaces, its files, what made
it (igds-fast versions, the models' sha256, the step, an equivalent command, backend and precision)
and the licence terms that come with it.

Its content derives only from what defines the set (the configuration, the image rows, the igds-fast
versions that made its images): no clock time, so a rerun that changes nothing writes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from importlib import resources
from typing import Any

from ..config import StepConfig
from ..errors import UserError
from ..subsets import class_info, subset
from .identity import DistillConfig
from .image_manifest import METADATA_FILE, SET_FORMAT, set_classes

CARD_FILE = "README.md"
SHEET_PATTERN = ".igds-contact-<folder>.png"
IMAGENET_TERMS = "https://image-net.org/download.php"
# The named subsets an equivalent command may give as --subset instead of listing every class.
SUBSETS = ("imagenette", "imagewoof", "imageidc", "imagenet100", "imagenet1k")
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bin of ``n`` images."""
    return next((name for limit, name in _SIZES if n < limit), "1M<n<10M" if n < 10_000_000 else "n>10M")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def _header(title: str, images: int, tags: list[str]) -> list[str]:
    return [
        "---",
        f"pretty_name: {json.dumps(title)}",
        "task_categories:",
        "- image-classification",
        "size_categories:",
        f"- {size_category(images)}",
        "license: other",
        "license_name: imagenet-terms-of-access",
        f"license_link: {IMAGENET_TERMS}",
        "tags:",
        *[f"- {t}" for t in tags],
        "---",
        "",
        f"# {title}",
        "",
    ]


def _loading() -> list[str]:
    return [
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("imagefolder", data_dir="DIR", split="train")  # image, label, the columns of '
        + METADATA_FILE,
        'names = ds.features["label"].names  # label i is the class folder names[i]',
        "",
        "from torchvision.datasets import ImageFolder",
        'tv = ImageFolder("DIR")  # the same labels: tv.classes == names',
        "```",
        "",
    ]


def _labels(rows: list[dict[str, Any]], denoiser_labels: dict[str, int] | None) -> list[str]:
    counts = Counter(r["wnid"] for r in rows)
    index = {r["wnid"]: r["class_index"] for r in rows}
    out = [
        "## Labels",
        "",
        "Two label spaces. `label`, what `datasets` and torchvision's `ImageFolder` give each image, is the",
        "class's position among the class folders sorted by name, 0..K-1 (`names[label]` is the folder, the",
        f"`wnid` column). `class_index`, a column of `{METADATA_FILE}`, is the class's ImageNet-1k index (-1 for a",
        "class named by its folder): what an ImageNet-1k classifier predicts. The table maps one to the other.",
    ]
    if denoiser_labels is not None:
        out.append("The denoiser label is the label the denoiser was conditioned on (its own class list).")
    head = "| label | folder | class | class_index (ImageNet-1k) |"
    rule = "|---|---|---|---|"
    if denoiser_labels is not None:
        head, rule = head + " denoiser label |", rule + "---|"
    out += ["", head + " images |", rule + "---|"]
    for label, wnid in enumerate(set_classes(rows)):
        cells = [label, f"`{wnid}`", _cell(class_info(wnid).name), index[wnid]]
        if denoiser_labels is not None:
            cells.append(denoiser_labels[wnid])
        out.append("| " + " | ".join(str(c) for c in [*cells, counts[wnid]]) + " |")
    return [*out, ""]


def _files(image_ext: str, sheets: bool, state: bool) -> list[str]:
    out = [
        "## Files",
        "",
        "| path | what |",
        "|---|---|",
        f"| `<folder>/<index>.{image_ext}` | the images, index 00000, 00001, ... within each class folder |",
        f"| `{METADATA_FILE}` | one row per image: `file_name`, `label`, `wnid`, `class_index`, `sample_index`, "
        "`seed`, `sha256`, `log_q`, `h2`, `saturation`, `pixel_std`, `backend`, `engine_id` "
        f"(schema `{SET_FORMAT}` in the file's key-value metadata) |",
        f"| `{CARD_FILE}` | this card |",
        "| `run.json` | what ran: configuration, library versions, machine, timings, run history |",
    ]
    if sheets:
        out.append(f"| `{SHEET_PATTERN}` | a contact sheet per class, its first 100 images (hidden: `ls -a`) |")
    if state:
        out.append("| `.igds-*`, `.unit-*` | job state: resume, `igds-fast verify` and `--repair` read it |")
    return [*out, ""]


def _embedded() -> tuple[dict[str, str], str | None]:
    """The embedded models' sha256 by role, and the licence line of their model card."""
    data = resources.files("igds_fast.data")
    try:
        meta = json.loads(data.joinpath("embedded.json").read_text())
        hashes = {role: meta[key]["sha256"] for role, key in (("denoiser", "denoiser"), ("critics", "critic"))}
        hashes["vae"] = meta["vae"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        hashes = {}
    try:
        card = data.joinpath("MODEL_CARD.md").read_text()
    except OSError:
        return hashes, None
    return hashes, next((ln.strip() for ln in card.splitlines() if ln.startswith("Licence")), None)


def _flag(name: str, value: Any) -> str | None:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{name.replace('_', '-')}"
    return None if value is None else f"{flag} {value}"


def _classes_option(wnids: list[str]) -> str:
    for name in SUBSETS:
        try:
            if [c.wnid for c in subset(name)] == wnids:
                return f"--subset {name}"
        except UserError:
            continue
    return "--classes " + ",".join(wnids)


def distilled_card(cfg: DistillConfig, rows: list[dict[str, Any]], versions: list[str]) -> bytes:
    """The card of a distilled set made by ``cfg`` whose images are ``rows``; ``versions``: the
    igds-fast versions whose runs made its images."""
    classes = set_classes(rows)
    title = f"igds-fast distilled set: {len(classes)} classes, {cfg.ipc} images per class"
    embedded, licence = _embedded()
    roles = {"denoiser": "--denoiser DENOISER", "vae": "--vae VAE", "critics": "--critics CRITICS"}
    own = [r for r in roles if cfg.models.get(r) is not None and cfg.models.get(r) != embedded.get(r)]

    def model(role: str, absent: str) -> str:
        h = cfg.models.get(role)
        if h is None:
            return absent
        return f"sha256 `{h}`" + (" (the embedded model)" if embedded.get(role) == h else "")

    try:
        step = asdict(StepConfig.from_record(cfg.step))
    except (TypeError, ValueError, UserError):  # a step this release cannot read: shown as recorded
        step = dict(cfg.step)
    command = [f"igds-fast distill --out DIR {_classes_option(cfg.wnids)}"]
    command.append(f"--ipc {cfg.ipc} --batch-size {cfg.batch_size} --seed {cfg.seed}")
    if cfg.backend != "eager" and cfg.engine_key is None:
        command.append("--engines ENGINES")
    else:
        command.append(f"--backend {cfg.backend} --dtype {cfg.precision}")
    if cfg.image_format != "png" or cfg.resolution is not None:
        command.append(f"--format {cfg.image_format}" + (f" --resolution {cfg.resolution}" if cfg.resolution else ""))
    if own:
        command.append(" ".join(roles[r] for r in own))
    if cfg.models.get("vae") is None and cfg.models.get("denoiser") == embedded.get("denoiser"):
        command.append("--vae none")
    flags = [f for f in (_flag(k, v) for k, v in step.items()) if f is not None]
    command += [" ".join(flags[i : i + 4]) for i in range(0, len(flags), 4)]
    engine = "none (eager)" if cfg.backend == "eager" else f"`{cfg.engine_id}`"
    lines = _header(title, len(rows), ["synthetic", "dataset-distillation", "igds-fast"])
    lines += [
        f"{len(rows)} synthetic images made by `igds-fast distill` (information-guided diffusion sampling): a",
        "class-conditional diffusion model sampled with guidance from noise-conditional critics, for training an",
        "image classifier in place of the real data. Every image's noise derives from (seed, class, index), so",
        "the same configuration gives the same bytes; `igds-fast verify DIR` checks every image's sha256.",
        "",
        *_loading(),
        *_labels(rows, dict(zip(cfg.wnids, cfg.labels, strict=True))),
        *_files(cfg.image_format.replace("jpeg", "jpg"), sheets=True, state=True),
        "## How it was made",
        "",
        "| | |",
        "|---|---|",
        f"| igds-fast | {', '.join(versions) if versions else 'not recorded'} |",
        f"| denoiser | {model('denoiser', 'not recorded')} |",
        f"| VAE | {model('vae', 'none (pixel space)')} |",
        f"| critics | {model('critics', 'none (guidance off)')} |",
        f"| backend, precision | {cfg.backend}, {cfg.precision} |",
        f"| engine | {engine} |",
        f"| seed | {cfg.seed} |",
        f"| images per class, batch size | {cfg.ipc}, {cfg.batch_size} |",
        f"| format, resolution | {cfg.image_format}, "
        + (f"{cfg.resolution} px |" if cfg.resolution else "the denoiser's output size |"),
        "",
        "The step:",
        "",
        "```json",
        json.dumps(step, indent=1),
        "```",
        "",
        "An equivalent command"
        + (" (`" + "`, `".join(roles[r].split()[1] for r in own) + "`: the files with the sha256 above)" if own else "")
        + ":",
        "",
        "```bash",
        " \\\n  ".join(command),
        "```",
        "",
        "## Licence",
        "",
        "The images are generated, not copied: by the models above, which were trained on real images.",
    ]
    if "denoiser" not in own and licence is not None:
        lines += [
            "The embedded model was trained on Imagenette, a subset of ImageNet; its model card",
            f"(`igds_fast/data/MODEL_CARD.md`) says: {licence}",
        ]
    if own:
        lines += [
            "The models given by sha256 above come with their own licences and those of their training data;",
            "for models trained on ImageNet (such as DiT-XL/2) ImageNet's terms apply.",
        ]
    lines += [
        f"ImageNet's terms of access ({IMAGENET_TERMS}) allow non-commercial research and educational use",
        "only: use this set under the same terms.",
        "",
    ]
    return "\n".join(lines).encode()


def random_real_card(identity: dict[str, Any], rows: list[dict[str, Any]]) -> bytes:
    """The card of a random-real baseline set (``identity``: its run's kind, ipc, seed, classes, source)."""
    classes = set_classes(rows)
    title = f"igds-fast random-real baseline: {len(classes)} classes, {identity['ipc']} images per class"
    command = (
        f"igds-fast baseline random-real --data {identity['source']} --out DIR "
        f"{_classes_option(identity['classes'])} --ipc {identity['ipc']} --seed {identity['seed']}"
    )
    lines = _header(title, len(rows), ["dataset-distillation", "baseline", "igds-fast"])
    lines += [
        f"{len(rows)} real images, {identity['ipc']} per class drawn at random (seed {identity['seed']}) from",
        f"`{identity['source']}`: the baseline a distilled set of the same size is compared with. The picks",
        "depend only on (seed, class, the sorted file list); `igds-fast verify DIR` checks every image's sha256.",
        "",
        *_loading(),
        *_labels(rows, None),
        *_files("png", sheets=False, state=False),
        "## How it was made",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Licence",
        "",
        "The images are copies of the source's images (re-encoded as PNG): the source's licence applies. For",
        f"ImageNet images, ImageNet's terms of access ({IMAGENET_TERMS}) allow non-commercial research and",
        "educational use only.",
        "",
    ]
    return "\n".join(lines).encode()

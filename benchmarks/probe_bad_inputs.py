"""Bad inputs to every ``igds-fast`` command, run as a new user would.

Each case runs the installed ``igds-fast`` in a fresh temporary working directory (a fresh HOME and
engine cache too) with a 60 s timeout, and is CLEAN when

* the exit code is neither 0 (the bad input was accepted) nor 1 (a bug),
* stderr's non-empty lines are exactly one line starting with ``error:`` (no traceback), and
* the failed command left nothing behind: the working directory (with every input the case made
  there: an existing --out file or folder, an edited engine, a damaged set) is byte for byte as it
  was, so no output can look complete.

One exception to the one-``error:``-line rule: ``verify`` of a set with damaged *images* is a report,
not an error; its contract is exit 3 and one stderr line saying what is missing or damaged.

Results go to benchmarks/results/probe_bad_inputs.json after every case; a rerun skips the cases
already there (``--rerun``: run them again; ``--only WORD``: the cases whose name contains WORD).

    OMP_NUM_THREADS=1 python benchmarks/probe_bad_inputs.py [--rerun] [--only distill-ipc]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "probe_bad_inputs.json"
TIMEOUT_S = 60
MAX_RSS = 6 * 2**30
W1, W2 = "n01440764", "n02102040"  # two Imagenette classes of the embedded model
NOT_EMBEDDED = "n01443537"  # a real ImageNet-1k WNID (goldfish) the embedded model does not know


# ------------------------------------------------------------------------------------------ fixtures


def igds_command() -> list[str]:
    exe = Path(sys.executable).with_name("igds-fast")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "igds_fast.cli"]


def probe_env(fx: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGDS_")}
    home = fx / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        OMP_NUM_THREADS="1",
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        IGDS_ENGINE_CACHE=str(home / "engines"),
        PYTHONUNBUFFERED="1",
    )
    env.pop("COLUMNS", None)
    return env


class Fixtures:
    """Inputs the cases start from, built once (lazily) in ``root`` and reused by later runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _run(self, args: list[str], cwd: Path) -> None:
        res = subprocess.run(
            igds_command() + args, cwd=cwd, env=probe_env(self.root), capture_output=True, text=True, timeout=600
        )
        if res.returncode != 0:
            raise RuntimeError(f"fixture `igds-fast {shlex.join(args)}` failed:\n{res.stderr[-2000:]}")

    def images(self) -> Path:
        """An ImageFolder with train/ and val/ of two classes, 6 + 3 PNGs of 32 px each."""
        path = self.root / "images"
        if not (path / ".done").exists():
            import numpy as np
            from PIL import Image

            rng = np.random.default_rng(0)
            for split, n in (("train", 6), ("val", 3)):
                for w in (W1, W2):
                    d = path / split / w
                    d.mkdir(parents=True, exist_ok=True)
                    for i in range(n):
                        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
            (path / ".done").touch()
        return path

    def distilled(self) -> Path:
        """A finished distilled set: one class, IPC 2, 2 eager steps."""
        path = self.root / "distilled"
        if not (path / "run.json").exists():
            shutil.rmtree(path, ignore_errors=True)
            self._run(
                ["distill", "--classes", W1, "--ipc", "2", "--steps", "2", "--backend", "eager", "--out", str(path)],
                self.root,
            )
        return path

    def engine(self) -> Path:
        """A tiny ONNX Runtime engine folder of the embedded model (batch 2, 5 steps, memory 4)."""
        path = self.root / "engine"
        if not (path / "manifest.json").exists():
            shutil.rmtree(path, ignore_errors=True)
            self._run(
                ["export", "--backend", "onnxruntime", "--batch-size", "2", "--steps", "5", "--ipc", "2"]
                + ["--memory-size", "4", "--out", str(path)],
                self.root,
            )
        return path


# --------------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    name: str
    kind: str
    args: list[str]  # after `igds-fast`; "{fx:NAME}" is replaced by a fixture's path
    setup: Callable[[Path, Fixtures], None] | None = None
    report_rc: int | None = None  # a report, not an error: this exit code and one stderr line
    words: tuple[str, ...] = ()  # the stderr line must name these


def garbage(name: str, n: int = 512) -> Callable[[Path, Fixtures], None]:
    def make(cwd: Path, fx: Fixtures) -> None:
        p = cwd / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(hashlib.sha256(name.encode()).digest() * (n // 32 + 1))

    return make


def text(name: str, content: str) -> Callable[[Path, Fixtures], None]:
    def make(cwd: Path, fx: Fixtures) -> None:
        p = cwd / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)

    return make


def folder(name: str, *files: str) -> Callable[[Path, Fixtures], None]:
    """A folder (with these small user files in it: a folder that is not ours)."""

    def make(cwd: Path, fx: Fixtures) -> None:
        (cwd / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            (cwd / name / f).write_text("the user's own file\n")

    return make


def both(*steps: Callable[[Path, Fixtures], None]) -> Callable[[Path, Fixtures], None]:
    def make(cwd: Path, fx: Fixtures) -> None:
        for s in steps:
            s(cwd, fx)

    return make


def copy_of(fixture: str, name: str, edit: Callable[[Path], None] | None = None) -> Callable[[Path, Fixtures], None]:
    def make(cwd: Path, fx: Fixtures) -> None:
        subprocess.run(["cp", "-a", str(getattr(fx, fixture)()), str(cwd / name)], check=True)
        if edit is not None:
            edit(cwd / name)

    return make


def edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(engine: Path) -> None:
        m = json.loads((engine / "manifest.json").read_text())
        change(m)
        (engine / "manifest.json").write_text(json.dumps(m, indent=1))

    return edit


def swap_wnids(m: dict) -> None:
    w = m["class_wnids"]
    w[0], w[1] = w[1], w[0]


def set_batch(m: dict) -> None:
    m["shapes"]["batch_size"] = 3


def set_format(m: dict) -> None:
    m["format"] = "igds-fast/engine-v99"


def drop_wnids(m: dict) -> None:
    m.pop("class_wnids")


def remove(rel: str) -> Callable[[Path], None]:
    return lambda p: (p / rel).unlink()


def scribble(rel: str) -> Callable[[Path], None]:
    return lambda p: (p / rel).write_bytes(os.urandom(256))


def link(name: str, target: str) -> Callable[[Path, Fixtures], None]:
    """A symbolic link ``name`` -> ``target`` (relative to the link's folder)."""

    def make(cwd: Path, fx: Fixtures) -> None:
        p = cwd / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        p.symlink_to(target)

    return make


def bomb_png(rel: str, side: int = 12000) -> Callable[[Path], None]:
    """A PNG of side x side black pixels (a decompression bomb: ~140 kB on disk, 144 Mpx decoded)."""

    def edit(root: Path) -> None:
        import struct
        import zlib

        raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
        (root / rel).write_bytes(png)

    return edit


def manifest_row_outside(root: Path) -> None:
    """The set without its records (checked by its metadata only), a row pointing outside it."""
    from igds_fast.jobs.image_manifest import read_image_manifest, write_image_manifest

    for p in [*root.glob(".unit-*"), root / ".igds-job.json"]:
        p.unlink()
    rows = read_image_manifest(root / "metadata.parquet")
    shutil.copy(root / rows[0]["path"], root.parent / "secret.png")
    rows[0]["path"] = "../secret.png"
    write_image_manifest(rows, root / "metadata.parquet")


def truncate_image(p: Path) -> None:
    img = next(iter(sorted(p.glob("n*/*.png"))))
    img.write_bytes(img.read_bytes()[:40])


def distill_args(**over: str | None) -> list[str]:
    """A cheap distill (one class, IPC 1, 2 eager steps into ./out) with some options changed (None: dropped)."""
    base: dict[str, str | None] = {
        "--classes": W1,
        "--ipc": "1",
        "--steps": "2",
        "--backend": "eager",
        "--out": "out",
    }
    flags = [k for k, v in over.items() if v == ""]  # switches
    base.update({k: v for k, v in over.items() if v != ""})
    args = ["distill"]
    for k, v in base.items():
        if v is not None:
            args += [k, v]
    return args + flags


def build(cmd: list[str], base: dict[str, str | None], kw: dict[str, str | None]) -> list[str]:
    """``cmd`` with the options of ``base`` changed by ``kw`` (python names; None: dropped, "": a switch)."""
    opts = dict(base)
    opts.update({"--" + k.replace("_", "-"): v for k, v in kw.items()})
    args = list(cmd)
    for k, v in opts.items():
        if v is not None and v != "":
            args += [k, v]
    return args + [k for k, v in opts.items() if v == ""]


def d(**kw: str | None) -> list[str]:
    return distill_args(**{"--" + k.replace("_", "-"): v for k, v in kw.items()})


def sample_args(**kw: str | None) -> list[str]:
    base = {"--classes": "0", "--steps": "2", "--out": "grid.png"}
    return build(["sample"], base, kw)


def export_args(**kw: str | None) -> list[str]:
    base = {"--backend": "onnxruntime", "--batch-size": "2", "--steps": "5", "--ipc": "2", "--memory-size": "4"}
    base.update({"--out": "eng"})
    return build(["export"], base, kw)


IMG = "{fx:images}"


def evaluate_args(**kw: str | None) -> list[str]:
    base = {"--train": "{fx:distilled}", "--val": IMG + "/val", "--net": "convnet3", "--resolution": "32"}
    base.update({"--seeds": "1", "--epochs": "1"})
    base.update({"--out": "results.json"})
    return build(["evaluate"], base, kw)


def quality_args(**kw: str | None) -> list[str]:
    base = {"--samples": "{fx:distilled}", "--real-train": IMG + "/train", "--real-val": IMG + "/val"}
    base.update({"--epochs": "1", "--json": "q.json"})
    return build(["quality"], base, kw)


def random_real_args(**kw: str | None) -> list[str]:
    base = {"--data": IMG + "/train", "--ipc": "1", "--classes": W1, "--out": "rr"}
    return build(["baseline", "random-real"], base, kw)


def train_dit_args(**kw: str | None) -> list[str]:
    base = {"--data": IMG + "/train", "--out": "dit", "--classes": W1, "--config": "tiny", "--resolution": "32"}
    base.update({"--steps": "1", "--batch-size": "2", "--ckpt-every": "1"})
    return build(["train-dit"], base, kw)


def train_critics_args(**kw: str | None) -> list[str]:
    base = {"--data": IMG + "/train", "--out": "crit", "--classes": f"{W1},{W2}", "--steps": "1"}
    base.update({"--batch-size": "4", "--width": "16", "--depth": "1", "--heads": "2", "--eval-images": "2"})
    base.update({"--feat-dim": "8"})
    return build(["train-critics"], base, kw)


def bench_args(**kw: str | None) -> list[str]:
    base = {"--batch-size": "2", "--steps": "2", "--backends": "eager", "--warmup": "0", "--repeats": "1"}
    base.update({"--e2e-backends": "none"})
    return build(["bench"], base, kw)


def pack_args(**kw: str | None) -> list[str]:
    base = {"--data": IMG + "/train", "--out": "pack.npz", "--classes": W1, "--resolution": "16"}
    return build(["pack-data"], base, kw)


NUM, TYPE, PATH, DIRFILE, GARBAGE, WNID, SHARD, CLASSES, OUT, LOG, CONFLICT, ENGINE, DAMAGED, USAGE = (
    "invalid number",
    "wrong type",
    "missing path",
    "directory/file swapped",
    "garbage bytes",
    "unknown WNID",
    "bad --shard",
    "bad --classes",
    "bad --out",
    "--log-json into a missing folder",
    "conflicting options",
    "edited engine manifest",
    "damaged distilled folder",
    "bad usage",
)


def cases() -> list[Case]:
    c: list[Case] = []
    add = lambda name, kind, args, setup=None, **kw: c.append(Case(name, kind, args, setup, **kw))  # noqa: E731

    # ---- distill: numbers
    for v in ("nan", "inf", "-1", "0", "10000000", "1.5"):
        add(f"distill-ipc-{v}", NUM if v != "1.5" else TYPE, d(ipc=v))
    add("distill-ipc-abc", TYPE, d(ipc="abc"))
    for v in ("0", "-2", "10000000"):
        add(f"distill-batch-size-{v}", NUM, d(batch_size=v))
    for v in ("0", "-5", "100000", "nan"):
        add(f"distill-resolution-{v}", NUM if v != "nan" else TYPE, d(resolution=v))
    for v in ("0", "-1", "nan", "abc", "100000", "2,x"):
        add(f"distill-steps-{v}", NUM, d(steps=v))
    for opt in ("guidance-scale", "beta", "cfg-scale"):
        for v in ("nan", "inf", "-1"):
            add(f"distill-{opt}-{v}", NUM, d(**{opt.replace("-", "_"): v}))
    add("distill-eta-2", NUM, d(sampler="ddim", eta="2"))
    add("distill-eta-nan", NUM, d(sampler="ddim", eta="nan"))
    add("distill-window-lo-gt-hi", CONFLICT, d(window_lo="800", window_hi="100"))
    add("distill-window-hi-5000", NUM, d(window_hi="5000"))
    add("distill-window-lo-neg", NUM, d(window_lo="-50", window_hi="-10"))
    add("distill-seed-abc", TYPE, d(seed="abc"))  # (any integer seed is valid: it is hashed)
    add("distill-threads-0", NUM, d(threads="0"))
    add("distill-threads-neg", NUM, d(threads="-4"))
    add("distill-cfg-channels-0", NUM, d(cfg_channels="0"))
    # ---- distill: words
    add("distill-sampler-euler", TYPE, d(sampler="euler"))
    add("distill-guidance-maybe", TYPE, d(guidance="maybe"))
    add("distill-format-gif", TYPE, d(format="gif"))
    add("distill-backend-nope", TYPE, d(backend="nope"))
    add("distill-device-tpu", TYPE, d(device="tpu"))
    add("distill-device-cuda", TYPE, d(device="cuda"))
    add("distill-dtype-fp8", TYPE, d(dtype="fp8"))
    add("distill-dtype-int8", TYPE, d(dtype="int8"))
    add("distill-unknown-option", USAGE, d(**{"frobnicate": "1"}))
    add("distill-extra-argument", USAGE, d() + ["stray"])
    # ---- distill: classes
    add("distill-wnid-unknown", WNID, d(classes="n99999999"))
    add("distill-wnid-not-in-model", WNID, d(classes=NOT_EMBEDDED))
    add("distill-classes-garbage", CLASSES, d(classes="fish"))
    add("distill-classes-empty", CLASSES, d(classes=","))
    add("distill-classes-duplicate", CLASSES, d(classes=f"{W1},{W1}"))
    add("distill-classes-label", CLASSES, d(classes="0"))
    add("distill-subset-nope", CLASSES, d(classes=None, subset="nope"))
    add("distill-subset-and-classes", CONFLICT, d(subset="imagewoof"))
    add("distill-classes-file-missing", PATH, d(classes=None, classes_file="nope.txt"))
    add("distill-classes-file-dir", DIRFILE, d(classes=None, classes_file="cdir"), folder("cdir"))
    add("distill-classes-file-garbage", GARBAGE, d(classes=None, classes_file="c.txt"), garbage("c.txt"))
    add("distill-classes-file-empty", CLASSES, d(classes=None, classes_file="c.txt"), text("c.txt", ""))
    add("distill-classes-file-unknown", WNID, d(classes=None, classes_file="c.txt"), text("c.txt", "n99999999\n"))
    # ---- distill: shard
    for v in ("3/2", "0/0", "a/b", "-1/2", "1", "1/2/3", "2/2"):
        add(f"distill-shard-{v.replace('/', '_')}", SHARD, d(shard=v))
    # ---- distill: models
    add("distill-denoiser-missing", PATH, d(guidance="off", denoiser="nope.safetensors"))
    add("distill-denoiser-empty-dir", DIRFILE, d(guidance="off", denoiser="ddir"), folder("ddir"))
    add("distill-denoiser-garbage", GARBAGE, d(guidance="off", denoiser="g.safetensors"), garbage("g.safetensors"))
    add("distill-denoiser-garbage-pt", GARBAGE, d(guidance="off", denoiser="g.pt"), garbage("g.pt"))
    add("distill-denoiser-npy", GARBAGE, d(guidance="off", denoiser="g.npy"), garbage("g.npy"))
    add("distill-critics-missing", PATH, d(critics="nope.safetensors"))
    add("distill-critics-garbage", GARBAGE, d(critics="c.safetensors"), garbage("c.safetensors"))
    add("distill-critics-dir", DIRFILE, d(critics="cdir"), folder("cdir"))
    add("distill-vae-missing", PATH, d(vae="nope-vae"))
    add("distill-vae-garbage", GARBAGE, d(vae="v.safetensors"), garbage("v.safetensors"))
    # ---- distill: outputs
    add("distill-out-is-file", OUT, d(out="out.txt"), text("out.txt", "keep me\n"))
    add("distill-out-foreign-overwrite", OUT, d(out="mine", overwrite=""), folder("mine", "notes.txt"))
    add("distill-out-foreign", OUT, d(out="mine"), folder("mine", "notes.txt"))
    add("distill-log-json-missing-folder", LOG, d(log_json="nodir/events.jsonl"))
    add("distill-log-json-dir", DIRFILE, d(log_json="ldir"), folder("ldir"))
    add("distill-engine-cache-file", DIRFILE, d(backend="onnxruntime", engine_cache="c.txt"), text("c.txt", "x"))
    add("distill-classes-newline", CLASSES, d(classes=f"{W1}\nfoo\x1b[31m"), words=("\\n", "\\x1b"))
    # ---- distill: links in --out (nothing is written or deleted through one)
    add("distill-out-dangling-link", OUT, d(), link("out", "gone"), words=("dangling",))
    add("distill-out-parent-dangling-link", OUT, d(out="gone/out"), link("gone", "nowhere"), words=("dangling",))
    add("distill-lock-is-link", OUT, d(), both(text("mine.txt", "the user's own file\n"), folder("out"),
        link("out/.igds-lock", "../mine.txt")), words=("symbolic link",))  # fmt: skip
    add("distill-run-log-is-link", OUT, d(ipc="2"), both(text("mine.txt", "the user's own file\n"),
        copy_of("distilled", "out", remove("n01440764/00001.png")), link("out/.igds-runs.jsonl", "../mine.txt")),
        words=("symbolic link",))  # fmt: skip
    add("distill-class-folder-is-link", OUT, d(ipc="2"), both(copy_of("distilled", "out"),
        folder("photos", "00000.png"), link("out/n01440764", "../photos")),
        words=("class folder", "symbolic link"))  # fmt: skip
    add("distill-overwrite-class-folder-is-link", OUT, d(overwrite=""), both(copy_of("distilled", "out"),
        folder("photos", "00000.png"), link("out/n01440764", "../photos")), words=("symbolic link",))  # fmt: skip
    add("distill-image-is-link", OUT, d(ipc="2"), both(text("mine.png", "the user's own file\n"),
        copy_of("distilled", "out"), link("out/n01440764/00001.png", "../../mine.png")),
        words=("symbolic link",))  # fmt: skip
    # ---- distill: engines
    add("distill-engines-missing", PATH, d(backend=None, engines="noeng"))
    add("distill-engines-file", DIRFILE, d(backend=None, engines="eng.txt"), text("eng.txt", "x"))
    add("distill-engines-empty-dir", PATH, d(backend=None, engines="edir"), folder("edir"))
    add("distill-engines-and-backend", CONFLICT, d(backend="onnxruntime", engines="e"), copy_of("engine", "e"))
    add("distill-engines-manifest-garbage", GARBAGE, d(backend=None, engines="e"),
        both(copy_of("engine", "e"), garbage("e/manifest.json")))  # fmt: skip
    add("distill-engines-swapped-wnids", ENGINE, d(backend=None, engines="e", steps="5", ipc="2"),
        copy_of("engine", "e", edit_manifest(swap_wnids)))  # fmt: skip
    add("distill-engines-batch-size-edited", ENGINE, d(backend=None, engines="e", steps="5", ipc="2"),
        copy_of("engine", "e", edit_manifest(set_batch)))  # fmt: skip
    add("distill-engines-format-edited", ENGINE, d(backend=None, engines="e", steps="5", ipc="2"),
        copy_of("engine", "e", edit_manifest(set_format)))  # fmt: skip
    add("distill-engines-no-wnids", ENGINE, d(backend=None, engines="e", steps="5", ipc="2"),
        copy_of("engine", "e", edit_manifest(drop_wnids)))  # fmt: skip
    add("distill-engines-graph-missing", ENGINE, d(backend=None, engines="e", steps="5", ipc="2"),
        copy_of("engine", "e", remove("step.onnx")))  # fmt: skip
    add("distill-engines-graph-garbage", GARBAGE, d(backend=None, engines="e", steps="5", ipc="2"),
        copy_of("engine", "e", scribble("step.onnx")))  # fmt: skip
    add(
        "distill-engines-steps-mismatch",
        CONFLICT,
        d(backend=None, engines="e", steps="7", ipc="2"),
        copy_of("engine", "e"),
    )
    add("distill-engines-ipc-too-big", CONFLICT, d(backend=None, engines="e", steps="5", ipc="100", batch_size="2"),
        copy_of("engine", "e"))  # fmt: skip
    # ---- distill: resuming a damaged folder with another configuration
    add("distill-into-other-run", CONFLICT, d(out="s", seed="5"), copy_of("distilled", "s"))
    add("distill-out-engine-folder-overwrite", OUT, d(out="e", overwrite=""), copy_of("engine", "e"))
    add("distill-resolution-huge-image-buffers", NUM, d(resolution="60000"))
    add("distill-batch-size-with-engine", CONFLICT, d(backend=None, engines="e", steps="5", ipc="2", batch_size="1"),
        copy_of("engine", "e"))  # fmt: skip

    # ---- sample
    add("sample-classes-missing", USAGE, sample_args(classes=None))
    add("sample-classes-word", CLASSES, sample_args(classes="fish"))
    add("sample-class-out-of-range", CLASSES, sample_args(classes="10"))
    add("sample-class-negative", CLASSES, sample_args(classes="-1"))
    add("sample-wnid-unknown", WNID, sample_args(classes="n99999999"))
    add("sample-wnid-not-in-model", WNID, sample_args(classes=NOT_EMBEDDED))
    add("sample-n-per-class-0", NUM, sample_args(n_per_class="0"))
    add("sample-n-per-class-huge", NUM, sample_args(n_per_class="10000000"))
    add("sample-batch-size-neg", NUM, sample_args(batch_size="-1"))
    add("sample-steps-nan", NUM, sample_args(steps="nan"))
    add("sample-cfg-scale-nan", NUM, sample_args(cfg_scale="nan"))
    add("sample-seed-float", TYPE, sample_args(seed="1.5"))
    add("sample-init-noise-dir", DIRFILE, sample_args(init_noise="ndir"), folder("ndir"))
    add("sample-init-noise-garbage", GARBAGE, sample_args(init_noise="n.npy"), garbage("n.npy"))
    add("sample-init-noise-missing", PATH, sample_args(init_noise="n.npy"))
    add("sample-out-dir", DIRFILE, sample_args(out="odir"), folder("odir"))
    add("sample-out-missing-folder", PATH, sample_args(out="nodir/g.png"))
    add("sample-latents-out-missing-folder", PATH, sample_args(latents_out="nodir/l.npy"))
    add("sample-denoiser-garbage", GARBAGE, sample_args(denoiser="g.safetensors"), garbage("g.safetensors"))
    add("sample-dtype-fp8", TYPE, sample_args(dtype="fp8"))
    add("sample-guidance-igds-foreign-critics", GARBAGE, sample_args(guidance="igds", critics="c.safetensors"),
        garbage("c.safetensors"))  # fmt: skip

    # ---- export
    add("export-out-is-file", OUT, export_args(out="eng.txt"), text("eng.txt", "keep me\n"))
    add("export-out-foreign-overwrite", OUT, export_args(out="mine", overwrite=""), folder("mine", "notes.txt"))
    add("export-batch-size-0", NUM, export_args(batch_size="0"))
    add("export-batch-size-huge", NUM, export_args(batch_size="10000000"))
    add("export-memory-size-neg", NUM, export_args(memory_size="-1"))
    add("export-memory-size-huge", NUM, export_args(memory_size="100000000"))
    add("export-ipc-0", NUM, export_args(ipc="0"))
    add("export-precision-int4", TYPE, export_args(precision="int4"))
    add("export-precision-fp8", TYPE, export_args(precision="fp8"))
    add("export-backend-nope", TYPE, export_args(backend="nope"))
    add("export-backend-eager", TYPE, export_args(backend="eager"))
    add("export-recipe-missing", PATH, export_args(recipe="r.toml"))
    add("export-recipe-garbage", GARBAGE, export_args(recipe="r.toml"), garbage("r.toml"))
    add("export-recipe-dir", DIRFILE, export_args(recipe="rdir"), folder("rdir"))
    add("export-steps-abc", NUM, export_args(steps="abc"))
    add(
        "export-denoiser-garbage",
        GARBAGE,
        export_args(denoiser="g.safetensors", guidance="off"),
        garbage("g.safetensors"),
    )
    add("export-device-cuda", TYPE, export_args(device="cuda"))
    add("export-guidance-scale-nan", NUM, export_args(guidance_scale="nan"))

    # ---- verify
    add("verify-missing", PATH, ["verify", "nope"])
    add("verify-file", DIRFILE, ["verify", "f.txt"], text("f.txt", "x"))
    add("verify-empty-dir", PATH, ["verify", "e"], folder("e"))
    add("verify-foreign-dir", PATH, ["verify", "mine"], folder("mine", "notes.txt"))
    # a damaged set is verify's report (exit 3), not an error: its one line must say what is damaged
    rep = {"report_rc": 3}
    add("verify-image-truncated", DAMAGED, ["verify", "s"], copy_of("distilled", "s", truncate_image),
        words=("1 damaged", "--repair"), **rep)  # fmt: skip
    add("verify-image-deleted", DAMAGED, ["verify", "s"], copy_of("distilled", "s", remove("n01440764/00001.png")),
        words=("1 missing",), **rep)  # fmt: skip
    add("verify-manifest-garbage", DAMAGED, ["verify", "s"], copy_of("distilled", "s", scribble("metadata.parquet")),
        words=("metadata.parquet damaged",), **rep)  # fmt: skip
    add("verify-manifest-missing", DAMAGED, ["verify", "s"], copy_of("distilled", "s", remove("metadata.parquet")),
        words=("metadata.parquet missing",), **rep)  # fmt: skip
    add("verify-run-json-garbage", DAMAGED, ["verify", "s"], copy_of("distilled", "s", scribble("run.json")),
        words=("run.json",), **rep)  # fmt: skip
    add("verify-unit-record-garbage", DAMAGED, ["verify", "s"],
        copy_of("distilled", "s", scribble(".unit-n01440764-0000.json")), words=("unit record",), **rep)  # fmt: skip
    add("verify-contact-sheet-garbage", DAMAGED, ["verify", "s"],
        copy_of("distilled", "s", scribble(".igds-contact-n01440764.png")),
        words=("contact sheet",), **rep)  # fmt: skip
    add(
        "verify-manifest-and-job-file-garbage",
        DAMAGED,
        ["verify", "s"],
        copy_of("distilled", "s", lambda p: (scribble("metadata.parquet")(p), scribble(".igds-job.json")(p))),
    )
    add("verify-manifest-row-outside", DAMAGED, ["verify", "s"], copy_of("distilled", "s", manifest_row_outside),
        words=("not a file inside the set",))  # fmt: skip
    add("verify-class-folder-is-link", DAMAGED, ["verify", "s"], both(copy_of("distilled", "s"),
        folder("photos", "0.png"), link("s/n01440764", "../photos")), words=("symbolic link",))  # fmt: skip
    add("verify-log-json-missing-folder", LOG, ["verify", "s", "--log-json", "nodir/e.jsonl"],
        copy_of("distilled", "s"))  # fmt: skip
    add("verify-repair-engines-missing", PATH, ["verify", "s", "--repair", "--engines", "noeng"],
        copy_of("distilled", "s", truncate_image))  # fmt: skip
    add("verify-repair-critics-garbage", GARBAGE, ["verify", "s", "--repair", "--critics", "g.safetensors"],
        both(copy_of("distilled", "s", truncate_image), garbage("g.safetensors")))  # fmt: skip

    # ---- evaluate
    add("evaluate-train-missing", PATH, evaluate_args(train="nope"))
    add("evaluate-train-file", DIRFILE, evaluate_args(train="t.txt"), text("t.txt", "x"))
    add("evaluate-train-empty", PATH, evaluate_args(train="e"), folder("e"))
    add("evaluate-val-missing", PATH, evaluate_args(val="nope"))
    add("evaluate-net-nope", TYPE, evaluate_args(net="nope"))
    add("evaluate-resolution-0", NUM, evaluate_args(resolution="0"))
    add("evaluate-resolution-huge", NUM, evaluate_args(resolution="100000"))
    add("evaluate-seeds-0", NUM, evaluate_args(seeds="0"))
    add("evaluate-epochs-neg", NUM, evaluate_args(epochs="-1"))
    add("evaluate-out-missing-folder", PATH, evaluate_args(out="nodir/r.json"))
    add("evaluate-out-dir", DIRFILE, evaluate_args(out="odir"), folder("odir"))
    add("evaluate-subset-nope", CLASSES, evaluate_args(subset="nope"))
    add("evaluate-device-tpu", TYPE, evaluate_args(device="tpu"))
    add("evaluate-train-garbage-image", GARBAGE, evaluate_args(train="s"),
        copy_of("distilled", "s", scribble("n01440764/00000.png")))  # fmt: skip
    add("evaluate-run-json-garbage", GARBAGE, evaluate_args(train="s"), copy_of("distilled", "s", scribble("run.json")))

    # ---- quality
    add("quality-samples-missing", PATH, quality_args(samples="nope"))
    add("quality-real-train-file", DIRFILE, quality_args(real_train="t.txt"), text("t.txt", "x"))
    add("quality-real-val-missing", PATH, quality_args(real_val="nope"))
    add("quality-resolution-0", NUM, quality_args(resolution="0"))
    add("quality-net-nope", TYPE, quality_args(net="nope"))
    add("quality-epochs-neg", NUM, quality_args(epochs="-1"))
    add("quality-json-missing-folder", PATH, quality_args(json="nodir/q.json"))
    add("quality-cache-dir-file", DIRFILE, quality_args(cache_dir="c.txt"), text("c.txt", "x"))
    add("quality-samples-empty", PATH, quality_args(samples="e"), folder("e"))
    add("quality-samples-garbage-image", GARBAGE, quality_args(samples="s"), garbage("s/n01440764/0.png"))
    add("quality-samples-decompression-bomb", GARBAGE, quality_args(samples="s"),
        copy_of("distilled", "s", bomb_png("n01440764/00009.png")), words=("decompression bomb",))  # fmt: skip
    add("quality-samples-bomb-resolution", GARBAGE, quality_args(samples="s", resolution="32"),
        copy_of("distilled", "s", bomb_png("n01440764/00009.png")), words=("decompression bomb",))  # fmt: skip
    add("quality-resolution-huge", NUM, quality_args(resolution="100000"))
    add("quality-json-dir", DIRFILE, quality_args(json="jdir"), folder("jdir"))
    add("quality-device-tpu", TYPE, quality_args(device="tpu"))
    add(
        "evaluate-run-json-list",
        GARBAGE,
        evaluate_args(train="s"),
        copy_of("distilled", "s", lambda p: (p / "run.json").write_text("[1]")),
    )
    add("quality-run-json-garbage", GARBAGE, quality_args(samples="s"), copy_of("distilled", "s", scribble("run.json")))

    # ---- baseline random-real
    add("random-real-data-missing", PATH, random_real_args(data="nope"))
    add("random-real-data-file", DIRFILE, random_real_args(data="d.txt"), text("d.txt", "x"))
    add("random-real-ipc-0", NUM, random_real_args(ipc="0"))
    add("random-real-ipc-neg", NUM, random_real_args(ipc="-2"))
    add("random-real-ipc-huge", NUM, random_real_args(ipc="10000000"))
    add("random-real-ipc-missing", USAGE, random_real_args(ipc=None))
    add("random-real-wnid-unknown", WNID, random_real_args(classes="n99999999"))
    add("random-real-class-not-in-data", WNID, random_real_args(classes=NOT_EMBEDDED))
    add("random-real-out-is-file", OUT, random_real_args(out="o.txt"), text("o.txt", "keep me\n"))
    add("random-real-out-foreign", OUT, random_real_args(out="mine"), folder("mine", "notes.txt"))

    # ---- train-dit
    add("train-dit-data-missing", PATH, train_dit_args(data="nope"))
    add("train-dit-data-garbage-pack", GARBAGE, train_dit_args(data="p.npz"), garbage("p.npz"))
    add("train-dit-resolution-0", NUM, train_dit_args(resolution="0"))
    add("train-dit-resolution-huge", NUM, train_dit_args(resolution="100000"))
    add("train-dit-steps-0", NUM, train_dit_args(steps="0"))
    add("train-dit-batch-size-0", NUM, train_dit_args(batch_size="0"))
    add("train-dit-lr-nan", NUM, train_dit_args(lr="nan"))
    add("train-dit-ema-decay-2", NUM, train_dit_args(ema_decay="2"))
    add("train-dit-ema-decay-nan", NUM, train_dit_args(ema_decay="nan"))
    add("train-dit-device-tpu", TYPE, train_dit_args(device="tpu"))
    add("train-dit-garbage-image", GARBAGE, train_dit_args(data="d"), garbage("d/n01440764/0.png"))
    add("train-dit-ckpt-every-0", NUM, train_dit_args(ckpt_every="0"))
    add("train-dit-config-nope", TYPE, train_dit_args(config="nope"))
    add("train-dit-precision-nope", TYPE, train_dit_args(precision="nope"))
    add("train-dit-patch-0", NUM, train_dit_args(patch="0"))
    add("train-dit-out-is-file", OUT, train_dit_args(out="o.txt"), text("o.txt", "keep me\n"))
    add("train-dit-wnid-unknown", WNID, train_dit_args(classes="n99999999"))
    add("train-dit-class-not-in-data", WNID, train_dit_args(classes=NOT_EMBEDDED))
    add("train-dit-vae-garbage", GARBAGE, train_dit_args(vae="v.safetensors"), garbage("v.safetensors"))

    # ---- train-critics
    add("train-critics-steps-0", NUM, train_critics_args(steps="0"))
    add("train-critics-batch-size-1", NUM, train_critics_args(batch_size="1"))
    add("train-critics-lr-nan", NUM, train_critics_args(lr="nan"))
    add("train-critics-heads-not-dividing", CONFLICT, train_critics_args(heads="5"))
    add("train-critics-feat-dim-0", NUM, train_critics_args(feat_dim="0"))
    add("train-critics-data-missing", PATH, train_critics_args(data="nope"))
    add("train-critics-val-file", DIRFILE, train_critics_args(val="v.txt"), text("v.txt", "x"))
    add("train-critics-out-is-file", OUT, train_critics_args(out="o.txt"), text("o.txt", "keep me\n"))
    add("train-critics-class-not-in-data", WNID, train_critics_args(classes=f"{W1},n02979186"))
    add("train-critics-denoiser-garbage", GARBAGE, train_critics_args(denoiser="g.safetensors"),
        garbage("g.safetensors"))  # fmt: skip
    add("train-critics-precision-nope", TYPE, train_critics_args(precision="nope"))
    add("train-critics-lr-neg", NUM, train_critics_args(lr="-0.1"))
    add("train-critics-garbage-image", GARBAGE, train_critics_args(data="d", classes=W1),
        garbage("d/n01440764/0.png"))  # fmt: skip

    # ---- bench
    add("bench-batch-size-0", NUM, bench_args(batch_size="0"))
    add("bench-steps-0", NUM, bench_args(steps="0"))
    add("bench-backends-empty", TYPE, bench_args(backends=","))
    add("bench-backends-nope", TYPE, bench_args(backends="nope"))
    add("bench-model-nope", TYPE, bench_args(model="nope"))
    add("bench-resolution-0", NUM, bench_args(resolution="0"))
    add("bench-repeats-0", NUM, bench_args(repeats="0"))
    add("bench-warmup-neg", NUM, bench_args(warmup="-1"))
    add("bench-memory-size-0", NUM, bench_args(memory_size="0"))
    add("bench-peak-tflops-nan", NUM, bench_args(peak_tflops="nan"))
    add("bench-dtype-fp8", TYPE, bench_args(dtype="fp8"))
    add("bench-attention-nope", TYPE, bench_args(attention="nope"))
    add("bench-threads-0", NUM, bench_args(threads="0"))
    add("bench-parity-inputs-0", NUM, bench_args(parity_inputs="0"))
    add("bench-ref-images-0", NUM, bench_args(ref_images="0"))
    add("bench-json-dir", DIRFILE, bench_args(json="jdir"), folder("jdir"))

    # ---- report
    add("report-missing", PATH, ["report", "nope.json", "--out", "r.md", "--plot", "p.png"])
    add("report-garbage", GARBAGE, ["report", "g.json", "--out", "r.md", "--plot", "p.png"], garbage("g.json"))
    add("report-dir", DIRFILE, ["report", "rdir", "--out", "r.md", "--plot", "p.png"], folder("rdir"))
    add("report-wrong-schema", GARBAGE, ["report", "g.json", "--out", "r.md", "--plot", "p.png"],
        text("g.json", '{"hello": 1}\n'))  # fmt: skip
    add("report-no-results", USAGE, ["report", "--out", "r.md"])

    # ---- pack-data
    add("pack-data-missing", PATH, pack_args(data="nope"))
    add("pack-data-file", DIRFILE, pack_args(data="d.txt"), text("d.txt", "x"))
    add("pack-data-resolution-0", NUM, pack_args(resolution="0"))
    add("pack-data-resolution-huge", NUM, pack_args(resolution="100000"))
    add("pack-data-out-not-npz", OUT, pack_args(out="p.txt"))
    add("pack-data-garbage-image", GARBAGE, pack_args(data="d"), garbage("d/n01440764/0.png"))
    add("pack-data-out-dir", DIRFILE, pack_args(out="odir"), folder("odir"))
    add("pack-data-wnid-unknown", WNID, pack_args(classes="n99999999"))
    add("pack-data-class-not-in-data", WNID, pack_args(classes=NOT_EMBEDDED))

    # ---- doctor and the top level
    add("doctor-unknown-option", USAGE, ["doctor", "--frobnicate"])
    add("doctor-extra-argument", USAGE, ["doctor", "extra"])
    add("unknown-command", USAGE, ["distil"])
    return c


# ------------------------------------------------------------------------------------------ running


def tree(root: Path) -> dict[str, str]:
    """Every path under root -> its sha256 (files) or 'dir' / 'link'."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def lock_state(rel: str, before: dict[str, str]) -> bool:
    """A writer lock or claim file (clearly temporary state: its content names the last holder) in a
    folder that already held a distill run: a failed writer may leave those, and only those."""
    p = Path(rel)
    is_lock = p.name.startswith(".igds-lock") or p.name == ".igds-claim"
    return is_lock and str(p.parent / ".igds-job.json") in before


def resolve(args: list[str], fx: Fixtures) -> list[str]:
    out = []
    for a in args:
        while "{fx:" in a:
            i = a.index("{fx:")
            j = a.index("}", i)
            a = a[:i] + str(getattr(fx, a[i + 4 : j])()) + a[j + 1 :]
        out.append(a)
    return out


def judge(case: Case, rc: int | None, stderr: str, before: dict[str, str], after: dict[str, str]) -> str | None:
    """None when clean, else why not."""
    if rc is None:
        return f"still running after {TIMEOUT_S} s"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if "Traceback" in stderr:
        return "a traceback on stderr"
    if rc == 0:
        return "exit 0: the bad input was accepted"
    if rc == 1:
        return "exit 1 (a bug)"
    if case.report_rc is not None:
        if rc != case.report_rc:
            return f"exit {rc}, expected the report's {case.report_rc}"
        if len(lines) != 1:
            return f"{len(lines)} stderr lines, expected one report line"
        if "Usage" in lines[0]:
            return "a usage message instead of the report"
    else:
        if len(lines) != 1:
            return f"{len(lines)} non-empty stderr lines, expected one 'error:' line"
        if not lines[0].startswith("error:"):
            return "the stderr line does not start with 'error:'"
        if len(lines[0]) < len("error: ") + 12:
            return "the error line says too little"
    missing = [w for w in case.words if w.lower() not in (lines[0].lower() if lines else "")]
    if missing:
        return f"the stderr line does not name {missing[0]!r}"
    new = sorted(k for k in set(after) - set(before) if not lock_state(k, before))
    gone = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k] and not lock_state(k, before))
    if new or gone or changed:
        parts = [f"{label} {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}" for label, v in
                 (("left", new), ("removed", gone), ("changed", changed)) if v]  # fmt: skip
        return "; ".join(parts)
    return None


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_watched(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int | None, str, str | None]:
    """(exit code or None, stderr, why it was killed): killed past TIMEOUT_S, or past MAX_RSS of memory
    (a bad input must not take the machine's memory from its other jobs)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        t0, killed, peak = time.monotonic(), None, 0
        while proc.poll() is None:
            peak = max(peak, rss_bytes(proc.pid))
            if peak > MAX_RSS:
                killed = f"used more than {MAX_RSS / 2**30:.0f} GiB of memory (killed)"
            elif time.monotonic() - t0 > TIMEOUT_S:
                killed = f"still running after {TIMEOUT_S} s (killed)"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.1)
        err.seek(0)
        return (None if killed else proc.returncode), err.read().decode(errors="replace"), killed


def run_case(case: Case, fx: Fixtures) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"probe-{case.name[:40]}-") as tmp:
        cwd = Path(tmp)
        if case.setup is not None:
            case.setup(cwd, fx)
        args = resolve(case.args, fx)
        before = tree(cwd)
        t0 = time.perf_counter()
        rc, stderr, killed = run_watched(igds_command() + args, cwd, probe_env(fx.root))
        seconds = time.perf_counter() - t0
        reason = killed or judge(case, rc, stderr, before, tree(cwd))
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    return {
        "command": "igds-fast " + shlex.join(case.args),
        "kind": case.kind,
        "rc": rc,
        "stderr_first_line": lines[0][:400] if lines else "",
        "stderr_lines": len(lines),
        "clean": reason is None,
        "reason": reason,
        "seconds": round(seconds, 1),
        "_stderr": stderr,  # printed with --verbose, not stored
    }


def machine() -> dict:
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch_version,
    }


def write(results: dict, path: Path) -> None:
    cs = results["cases"]
    results["totals"] = {
        "cases": len(cs),
        "clean": sum(r["clean"] for r in cs.values()),
        "not_clean": sum(not r["clean"] for r in cs.values()),
    }
    results["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["machine"] = machine()
    results["torch"] = results["machine"]["torch"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rerun", action="store_true", help="Run the cases already in the results again.")
    ap.add_argument("--only", action="append", default=[], help="Only cases whose name contains this (repeatable).")
    ap.add_argument("--fixtures", type=Path, default=Path(tempfile.gettempdir()) / "igds-probe-fixtures")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--list", action="store_true", help="List the cases and exit.")
    ap.add_argument("--verbose", action="store_true", help="Print the end of stderr of every case not clean.")
    a = ap.parse_args()
    all_cases = cases()
    names = [cs.name for cs in all_cases]
    assert len(set(names)) == len(names), "case names must be unique"
    if a.list:
        for cs in all_cases:
            print(f"{cs.name:45s} {cs.kind:30s} igds-fast {shlex.join(cs.args)}")
        return 0
    results = json.loads(a.results.read_text()) if a.results.exists() else {"cases": {}}
    results["cases"] = {k: v for k, v in results.get("cases", {}).items() if k in names}  # drop retired cases
    fx = Fixtures(a.fixtures)
    todo = [cs for cs in all_cases if (not a.only or any(w in cs.name for w in a.only))]
    todo = [cs for cs in todo if a.rerun or cs.name not in results["cases"]]
    print(f"{len(all_cases)} cases, {len(todo)} to run, fixtures in {fx.root}", flush=True)
    for i, cs in enumerate(todo, 1):
        r = run_case(cs, fx)
        stderr = r.pop("_stderr")
        results["cases"][cs.name] = r
        # keep the table's order
        results["cases"] = {n: results["cases"][n] for n in names if n in results["cases"]}
        write(results, a.results)
        mark = "clean" if r["clean"] else "NOT CLEAN"
        print(f"[{i}/{len(todo)}] {cs.name}: {mark} rc={r['rc']} {r['seconds']}s {r['reason'] or ''}", flush=True)
        if not r["clean"]:
            print(f"    {r['stderr_first_line'][:200]}", flush=True)
            if a.verbose:
                print("    | " + "\n    | ".join(stderr.strip().splitlines()[-12:]), flush=True)
    write(results, a.results)
    t = results["totals"]
    print(f"\n{t['clean']}/{t['cases']} clean, {t['not_clean']} not clean -> {a.results}")
    for name, r in results["cases"].items():
        if not r["clean"]:
            print(f"  {name}: {r['reason']} | {r['stderr_first_line'][:160]}")
    return 0 if t["not_clean"] == 0 and t["cases"] == len(all_cases) else 3


if __name__ == "__main__":
    sys.exit(main())

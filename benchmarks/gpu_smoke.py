#!/usr/bin/env python3
"""The GPU smoke check: one command, a deadline, one JSON line per check, flushed as it completes.

    PYTHONPATH=. python3 benchmarks/gpu_smoke.py --out $OUT --deadline 300
    python benchmarks/gpu_smoke.py --dry-run --out DIR     # the same checks on the CPU at tiny sizes

Checks, in order; each in its own try, each with a time budget, each skipped with "no time left"
when the deadline is near (the XL rows keep the later checks' least time aside):
  environment        versions (python, torch, CUDA, cuDNN, triton, onnx, onnxruntime and its
                     providers, numpy, ...), device, capability, memory, optional packages, CUDA
                     toolkit, compilers, CPU
  backend/NAME       whether the exported backend NAME can build and run on the GPU here, or why not
                     (a missing package, ONNX Runtime's CUDA provider, AOTInductor's CUDA toolkit)
  distill            the embedded model through the distill command (eager, 2 classes, IPC 2, the
                     default step) in fp32 and in bf16; images written; the two runs' images compared
  xl/build           DiT-XL/2 at 256 px built on the GPU in bf16 (random weights, 4x32x32 latents,
                     1000 classes, learned sigma), our SD-layout VAE decoder for the clip guard and a
                     latent critic (train-critics' defaults for that shape), assembled into the
                     shipped default step (StepConfig())
  xl/plain bB        the plain step (denoiser CFG pass + update), B in 16, 64, 256
  xl/guided bB       the default guided step (critic gradient + clip guard)
  xl/chain bB        a whole chain of the default step through sampling.run_chain, a CUDA event per step
  profile            the profiler's top 10 kernels (by CUDA time) of one guided step
  compile            torch.compile of the plain step (mode reduce-overhead: CUDA graphs), in a child
                     process stopped at its budget: compile seconds, ms vs eager, CUDA graphs used?
  aoti               an AOTInductor package of the embedded model's plain step (needs a CUDA toolkit
                     on the GPU; the dry run packages its tiny DiT), in a child process: build
                     seconds, reload, parity, ms
  done               counts and total seconds
Every XL row says which step ran (steps, how many of them guided, the clip guard) and records
torch.cuda.max_memory_allocated (reset before the row) beside the package's formulas
(igds_fast.models.flops: FLOPs, the clip guard's decoder activations).

Results: OUT/smoke.jsonl (one JSON object a line: check, status ok|skipped|failed, reason, seconds,
summary, the numbers) and OUT/smoke.log (tracebacks, the child processes' output). A child stopped at
its budget is "skipped" ("no time left: stopped at its budget"), not "failed": nothing is known
wrong. The run stops at the first CUDA error that leaves the device unusable ("an illegal memory
access", a device-side assert, or any error after which torch.cuda.synchronize() fails) and writes
a line saying so.
Exit status: 0 when no check failed, 1 otherwise, 2 for bad options.

--pretend-missing tensorrt,diffusers,onnxruntime,onnxruntime-gpu,cuda-toolkit makes this process
(and its children) see those as absent: the lent GPU machine has no tensorrt, no onnxruntime-gpu
and no diffusers.

Only torch and the standard library are imported at the top: igds_fast is imported inside the
checks, so a broken import is one failed check, not a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # as PYTHONPATH=. does: the package is not installed on the GPU machine
    sys.path.insert(0, str(ROOT))

PRETENDABLE = ("tensorrt", "diffusers", "onnxruntime", "onnxruntime-gpu", "cuda-toolkit")
# The same patterns as igds_fast.bench.timing.STICKY_CUDA_ERRORS (a test checks that they agree).
STICKY_CUDA_ERRORS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ecc",
    "hardware exception",
    "launch timed out",
)
GPU_BATCHES, DRY_BATCHES = (16, 64, 256), (1, 2)
RESERVE_S = 3.0  # kept for the final line
# (least seconds a check needs to start, most it may take): on a GPU, in the dry run
BUDGETS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "environment": ((1, 30), (1, 30)),
    "backend": ((0.5, 30), (0.5, 30)),
    "distill": ((20, 90), (5, 60)),
    "xl/build": ((10, 60), (2, 30)),
    "profile": ((5, 30), (2, 20)),
    "compile": ((45, 120), (10, 90)),
    "aoti": ((30, 90), (10, 90)),
}
LATER = {"profile": "xl", "compile": "xl", "aoti": "xl"}  # checks whose least time the XL rows leave


class ChildFailed(RuntimeError):
    """A check that failed in its child process (whose CUDA context is not this one's)."""


class Skip(Exception):
    """A check that cannot run here: the message says why; ``numbers`` still go into its line."""

    def __init__(self, reason: str, numbers: dict[str, Any] | None = None):
        super().__init__(reason)
        self.numbers = numbers or {}


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:400]}" if text else type(e).__name__


def sticky_reason(e: BaseException | None, device: torch.device) -> str | None:
    """Why the CUDA context is unusable (after ``e``, or after a check that passed), or None."""
    if e is not None and any(p in f"{type(e).__name__}: {e}".lower() for p in STICKY_CUDA_ERRORS):
        return first_line(e)
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return None
    try:  # a kernel fault surfaces at the next synchronisation
        torch.cuda.synchronize(device)
    except Exception as err:
        return f"torch.cuda.synchronize() fails: {first_line(err)}"
    return None


def gib(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**28 else f"{n / 2**20:.1f} MiB"


# ---- the run: budgets, lines, the stop -----------------------------------------------------------


class Smoke:
    def __init__(self, args: argparse.Namespace):
        self.dry: bool = args.dry_run
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.out / "smoke.jsonl"
        self.logfile = self.out / "smoke.log"
        for f in (self.jsonl, self.logfile):
            f.write_text("")
        self.start = time.monotonic()
        self.deadline = self.start + args.deadline
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.missing: set[str] = set(args.pretend_missing)
        self.only: list[str] | None = args.only
        self.fail_in: str | None = args.fail_in
        self.status: dict[str, str] = {}
        self.stopped: str | None = None
        self.state: dict[str, Any] = {}
        self.args = args

    # time
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def budget(self, name: str) -> tuple[float, float]:
        gpu, dry = BUDGETS[name.split("/")[0] if name.startswith("backend/") else name]
        return dry if self.dry else gpu

    def kept_for_later(self) -> float:
        return sum(self.budget(n)[0] for n in LATER if self.selected(n) and n not in self.status)

    # output
    def log(self, text: str) -> None:
        with open(self.logfile, "a") as f:
            f.write(text.rstrip() + "\n")

    def emit(self, line: dict[str, Any]) -> None:
        line = dict(line)
        line = {"check": line.pop("check"), "status": line.pop("status"), "reason": line.pop("reason", None)} | line
        line["t"] = round(time.monotonic() - self.start, 2)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(line, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        text = line.get("reason") if line["status"] != "ok" and line.get("reason") else line.get("summary")
        secs = f"{line['seconds']:6.1f} s" if isinstance(line.get("seconds"), (int, float)) else " " * 8
        print(f"[{line['status']:7}] {line['check']:18} {secs}  {text or ''}", flush=True)

    def selected(self, name: str) -> bool:
        return self.only is None or any(
            name == o or name.startswith(o + "/") or name.startswith(o + " ") for o in self.only
        )

    def stop(self, where: str, why: str) -> None:
        self.stopped = where
        self.emit({"check": "stopped", "status": "failed", "reason": why, "seconds": 0.0})

    # one check
    def check(
        self,
        name: str,
        fn: Callable[[float], dict[str, Any] | None],
        need_s: float | None = None,
        needs: tuple[str, ...] = (),
        what: str | None = None,
        force: bool = False,
    ) -> dict[str, Any] | None:
        if not (force or self.selected(name)):
            return None
        line: dict[str, Any] = {"check": name}
        if what:
            line["what"] = what
        least, most = self.budget(name) if need_s is None else (need_s, need_s * 3 + 30)
        left = self.left() - RESERVE_S
        reason = None
        if self.stopped:
            reason = f"not run: the run stopped at {self.stopped}"
        else:
            for dep in needs:
                if self.status.get(dep) != "ok":
                    reason = f"not run: needs {dep} ({self.status.get(dep, 'not run')})"
                    break
        if reason is None and left < least:
            reason = f"no time left (needs ~{least:.0f} s, {max(left, 0):.0f} s left before the deadline)"
        if reason is not None:
            self.status[name] = "skipped"
            self.emit(line | {"status": "skipped", "reason": reason, "seconds": 0.0})
            return line
        t0 = time.monotonic()
        sticky: str | None = None
        try:
            if self.fail_in == name:
                raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated by --fail-in)")
            numbers = fn(min(most, left)) or {}
            line |= {"status": "ok", **numbers}
        except Skip as e:
            line |= {"status": "skipped", "reason": str(e), **e.numbers}
        except Exception as e:  # not kept: its traceback would hold the failed check's tensors
            line |= {"status": "failed", "reason": first_line(e)}
            self.log(f"--- {name} failed ---\n{traceback.format_exc()}")
            # a child's error was in its own CUDA context: only this process's synchronisation counts
            sticky = sticky_reason(None if isinstance(e, ChildFailed) else e, torch.device("cpu"))
        line["seconds"] = round(time.monotonic() - t0, 2)
        sticky = sticky or sticky_reason(None, self.device)
        if line["status"] == "failed" and self.device.type == "cuda" and not sticky:
            torch.cuda.empty_cache()  # e.g. after an out-of-memory error: the next check starts clean
        self.status[name] = line["status"]
        self.emit(line)
        if sticky:
            self.stop(
                name,
                f"a CUDA error in {name} left the device unusable: {sticky}; later checks not run "
                "(only a new process could use the GPU again)",
            )
        return line

    # a check in a child process, stopped at its budget
    def in_child(self, name: str, budget: float) -> dict[str, Any]:
        tmp = Path(tempfile.mkdtemp(prefix="igds-smoke-"))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", str(tmp)]
        cmd += ["--deadline", f"{max(budget - 2, 1):.0f}"]
        cmd += ["--dry-run"] if self.dry else []
        cmd += ["--pretend-missing", ",".join(sorted(self.missing))] if self.missing else []
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=budget)
            timed_out = False
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            timed_out = True
        self.log(f"--- {name}: child process (exit {proc.returncode}) ---\n{(output or '')[-30000:]}")
        lines = [json.loads(x) for x in (tmp / "smoke.jsonl").read_text().splitlines() if x.strip()]
        shutil.rmtree(tmp, ignore_errors=True)
        mine = [x for x in lines if x.get("check") == name]
        if timed_out:  # a budget reached, not a failure of the code: what it printed is in smoke.log
            raise Skip(f"no time left: stopped at its budget of {budget:.0f} s (see smoke.log)", {"timed_out": True})
        if not mine:
            tail = (output or "").strip().splitlines()[-1:] or ["no output"]
            raise ChildFailed(f"the child process wrote no result (exit {proc.returncode}): {tail[0][:300]}")
        got = mine[-1]
        numbers = {k: v for k, v in got.items() if k not in ("check", "status", "reason", "seconds", "t")}
        numbers["child_seconds"] = got.get("seconds")
        if got["status"] == "skipped":
            raise Skip(got["reason"], numbers)
        if got["status"] == "failed":
            raise ChildFailed(got["reason"])
        return numbers


# ---- pretending packages are missing -------------------------------------------------------------


def pretend_missing(missing: set[str]) -> None:
    """Make this process see the named packages as absent: ``import`` fails (a None entry in
    sys.modules), ONNX Runtime lists no GPU provider, torch finds no CUDA toolkit."""
    for name in ("tensorrt", "diffusers", "onnxruntime"):
        if name in missing:
            sys.modules[name] = None  # type: ignore[assignment]
    if "onnxruntime-gpu" in missing and "onnxruntime" not in missing:
        try:
            import onnxruntime as ort
        except ImportError:
            return
        real = ort.get_available_providers
        gpu = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        ort.get_available_providers = lambda: [p for p in real() if p not in gpu]


def cuda_toolkit_patch(missing: set[str]) -> None:
    if "cuda-toolkit" in missing:
        from igds_fast.backends import compiled

        compiled.cuda_toolkit = lambda: None  # build_unavailable reads it at call time


def have(name: str, missing: set[str]) -> bool:
    if name in missing:
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# ---- (a) environment -----------------------------------------------------------------------------


def version_of(dist: str, module: str, missing: set[str]) -> str | None:
    if module in missing or dist in missing:
        return None
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def first_output_line(cmd: list[str]) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [x.strip() for x in (res.stdout + res.stderr).splitlines() if x.strip()]
    release = [x for x in lines if "release" in x]  # nvcc: "Cuda compilation tools, release 13.0, V13.0.48"
    return (release or lines or [None])[0]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def check_environment(s: Smoke, _budget: float) -> dict[str, Any]:
    m = s.missing
    n: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    n["platform"] = platform.platform()
    n["torch"] = torch.__version__
    n["torch_cuda"] = torch.version.cuda
    n["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    n["tf32_defaults"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    dists = {
        "triton": "triton",
        "numpy": "numpy",
        "onnx": "onnx",
        "onnxscript": "onnxscript",
        "onnxruntime": "onnxruntime",
        "onnxruntime-gpu": "onnxruntime",
        "tensorrt": "tensorrt",
        "diffusers": "diffusers",
        "safetensors": "safetensors",
        "pillow": "PIL",
        "pyarrow": "pyarrow",
        "typer": "typer",
        "tqdm": "tqdm",
        "setuptools": "setuptools",
    }
    n["versions"] = {d: version_of(d, mod, m) for d, mod in dists.items()}
    providers: list[str] | None = None
    if have("onnxruntime", m):
        try:
            import onnxruntime as ort

            providers = list(ort.get_available_providers())
        except Exception as e:
            providers = [f"cannot import: {first_line(e)}"]
    n["onnxruntime_providers"] = providers
    n["optional"] = {
        "tensorrt": have("tensorrt", m),
        "onnxruntime CUDAExecutionProvider (onnxruntime-gpu)": bool(providers and "CUDAExecutionProvider" in providers),
        "diffusers (not needed: our own AutoencoderKL)": have("diffusers", m),
    }
    n["pretended_missing"] = sorted(m)
    tool: dict[str, Any] = {k: os.environ.get(k) for k in ("CUDA_HOME", "CUDA_PATH")}
    tool["nvcc"] = shutil.which("nvcc")
    tool["nvcc_version"] = first_output_line([tool["nvcc"], "--version"]) if tool["nvcc"] else None
    for cc in ("gcc", "g++"):
        tool[cc] = shutil.which(cc)
        tool[f"{cc}_version"] = first_output_line([tool[cc], "--version"]) if tool[cc] else None
    try:
        from igds_fast.backends import compiled

        tool["torch_cuda_home"] = compiled.cuda_toolkit() if have("setuptools", m) else None
        tool["aoti_cuda_build"] = compiled.build_unavailable("cuda") or "possible"
    except Exception as e:
        tool["torch_cuda_home"] = f"unknown: {first_line(e)}"
    n["toolchain"] = tool
    n["cpu"] = cpu_model()
    n["cpu_count"] = os.cpu_count()
    n["torch_threads"] = torch.get_num_threads()
    n["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        props = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        n["device"] = torch.cuda.get_device_name(dev)
        n["device_count"] = torch.cuda.device_count()
        n["capability"] = ".".join(map(str, torch.cuda.get_device_capability(dev)))
        n["sm_count"] = props.multi_processor_count
        n["total_mem_bytes"], n["free_mem_bytes"] = int(total), int(free)
        n["bf16_supported"] = torch.cuda.is_bf16_supported()
        n["nvidia_smi"] = (
            first_output_line(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
            if shutil.which("nvidia-smi")
            else None
        )
    try:
        import igds_fast

        n["igds_fast"] = igds_fast.__version__
    except Exception as e:
        n["igds_fast"] = f"does not import: {first_line(e)}"
    where = n.get("device") or f"CPU ({n['cpu']})"
    n["summary"] = (
        f"python {n['python']}, torch {n['torch']} (CUDA {n['torch_cuda']}, cuDNN {n['cudnn']}), "
        f"{where}; ORT providers {providers}; nvcc {'yes' if tool['nvcc'] else 'no'}"
    )
    if not s.dry and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible to torch (run with --dry-run on a CPU)")
    return n


def check_backend(s: Smoke, name: str) -> dict[str, Any]:
    """Whether the exported backend can be built and run on CUDA here (the dry run asks the same for
    CUDA: what the GPU run would find with this machine's packages)."""
    from igds_fast.backends.registry import BACKENDS
    from igds_fast.bench.runners import unavailable_on

    reason = unavailable_on(name, "cuda")
    if reason:
        raise Skip(reason, {"for": "cuda"})
    return {"for": "cuda", "summary": BACKENDS[name].describe()}


# ---- (b) the embedded model through distill ------------------------------------------------------


def read_images(folder: Path) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    return {
        str(p.relative_to(folder)): np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*/*.png"))
    }


def check_distill(s: Smoke, _budget: float) -> dict[str, Any]:
    import numpy as np

    from igds_fast.cli import app

    classes, ipc = ("n01440764", 1) if s.dry else ("n01440764,n02102040", 2)
    steps = ["--steps", "3"] if s.dry else []  # the GPU run: the default step (50 steps)
    runs: dict[str, Any] = {}
    images: dict[str, dict[str, Any]] = {}
    step: Any = None
    with tempfile.TemporaryDirectory(prefix="igds-smoke-distill-") as tmp:
        for dtype in ("fp32", "bf16"):
            out, log = Path(tmp) / dtype, Path(tmp) / f"{dtype}.jsonl"
            args = [
                "distill",
                "--out",
                str(out),
                "--classes",
                classes,
                "--ipc",
                str(ipc),
                "--backend",
                "eager",
                "--device",
                s.device.type,
                "--dtype",
                dtype,
                "--log-json",
                str(log),
                "--overwrite",
                "--no-progress",
                *steps,
            ]
            t0 = time.perf_counter()
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                code = app(args, standalone_mode=False)
            wall = time.perf_counter() - t0
            s.log(f"--- distill {dtype}: printed ---\n{printed.getvalue()[-5000:]}")
            events = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
            fin = next((e for e in reversed(events) if e.get("event") in ("finished", "error")), None)
            if code not in (0, None) or fin is None or fin.get("event") != "finished" or not fin.get("complete"):
                raise RuntimeError(f"distill --dtype {dtype} did not finish (exit {code}): {fin}")
            images[dtype] = read_images(out)
            runs[dtype] = {
                "wall_s": round(wall, 2),
                "img_per_s": fin.get("img_per_s"),
                "images_made": fin.get("images_made"),
                "pngs": len(images[dtype]),
            }
            with contextlib.suppress(OSError, ValueError, KeyError):
                step = json.loads((out / "run.json").read_text())["config"]["step"]
    a, b = images["bf16"], images["fp32"]
    if not b or set(a) != set(b):
        raise RuntimeError(f"the runs wrote different images: fp32 {sorted(b)}, bf16 {sorted(a)}")
    x = np.stack([a[k] for k in sorted(a)]).astype(np.float64)
    r = np.stack([b[k] for k in sorted(b)]).astype(np.float64)
    diff = np.abs(x - r)
    ref = r / 127.5 - 1
    rel = float(np.linalg.norm((x - r) / 127.5) / max(np.linalg.norm(ref), 1e-12))
    parity = {
        "compared": "the written PNGs (uint8) of the bf16 run against the fp32 run's (same seeds, classes, step); "
        "rel_l2 on images scaled to [-1, 1]",
        "rel_l2": rel,
        "max_abs_levels": float(diff.max()),
        "mean_abs_levels": float(diff.mean()),
    }
    steps_n = step.get("steps") if isinstance(step, dict) else None
    return {
        "what": f"igds-fast distill --backend eager --device {s.device.type}, classes {classes}, IPC {ipc}, "
        f"{'3 steps' if s.dry else 'the default step'}; fp32 then bf16",
        "step": step,
        "runs": runs,
        "parity_bf16_vs_fp32": parity,
        "summary": f"{runs['bf16']['pngs']} images each; bf16 {runs['bf16']['img_per_s'] or 0:.2f} img/s, "
        f"fp32 {runs['fp32']['img_per_s'] or 0:.2f} img/s ({steps_n} steps); bf16 vs fp32 images: rel {rel:.3g}, "
        f"mean {parity['mean_abs_levels']:.2f} levels",
    }


# ---- (c) DiT-XL/2 on the GPU ---------------------------------------------------------------------


def build_xl(device: torch.device, dry: bool) -> dict[str, Any]:
    """DiT-XL/2 (or, dry, a tiny DiT through the same code), our SD-layout VAE decoder and a latent
    critic, random weights created on ``device`` and cast to bf16 there (the pipeline's bf16 rule:
    the critic and the VAE follow the denoiser), in the shipped default step. The dry run keeps fp32
    (a CPU without bf16 units runs and compiles bf16 several times slower)."""
    from dataclasses import asdict, replace

    from igds_fast.bench.config import BenchConfig
    from igds_fast.bench.models import BenchModels
    from igds_fast.bench.run import step_flops
    from igds_fast.bench.runners import step_label
    from igds_fast.config import StepConfig
    from igds_fast.guidance.step import GuidedStep
    from igds_fast.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
    from igds_fast.models.critics import CriticConfig, NoiseCritic
    from igds_fast.models.dit import DiT, DiTConfig
    from igds_fast.models.flops import decoder_grad_bytes, meta_copy
    from igds_fast.models.vae import LatentVAE

    classes = list(range(10))
    if dry:
        dit_cfg = DiTConfig(
            input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2, num_classes=1000
        )
        vae_cfg = AutoencoderKLConfig(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4)
        critic_cfg = CriticConfig(
            in_channels=4, input_size=8, patch_size=2, width=64, depth=1, heads=2, class_ids=classes
        )
        step_cfg = replace(StepConfig(), steps="5")
        name = "tiny DiT (dry run: DiT-XL/2's code path at 8x8 latents)"
    else:
        dit_cfg = DiTConfig.from_arch("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000)
        vae_cfg = AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
        # train-critics' defaults for a 4x32x32 latent: vit, patch 2, width 192, depth 4, 4 heads
        critic_cfg = CriticConfig(in_channels=4, input_size=32, patch_size=2, class_ids=classes)
        step_cfg = StepConfig()  # the shipped default
        name = "DiT-XL/2 at 256 px (4x32x32 latents)"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        den = DiT(dit_cfg)
        critic = NoiseCritic(critic_cfg)
        codec = LatentVAE(AutoencoderKL(vae_cfg))
    with torch.no_grad():  # the critic's t-modulation starts at zero: small random weights instead
        for pname, p in critic.named_parameters():
            if ".ada." in pname:
                p.normal_(0, 0.02)
    dtype = torch.float32 if dry else torch.bfloat16
    for mod in (den, critic, codec):
        mod.eval().requires_grad_(False).to(dtype)
    step = GuidedStep(den, step_cfg, critic, pixel_space=False, decoder=codec).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t0
    # FLOPs by the bench's accounting, counted on an fp32 meta copy of the decoder (the counter's input is fp32)
    models = BenchModels(den, critic, meta_copy(codec).float(), {})
    flops = step_flops(models, BenchConfig(batch_size=1), step, step_cfg)
    n = len(step.schedule)
    guided = [k for k in range(n) if float(step.guide_on[k]) > 0]
    return {
        "name": name,
        "dtype": str(dtype).removeprefix("torch."),
        "step": step,
        "codec": codec,
        "label": step_label(step),
        "build_s": build_s,
        "flops": flops,  # per image (batch 1)
        "grad_bytes": decoder_grad_bytes(codec, step.shape),  # per image, bf16
        "plain_index": sorted(step.plain_steps)[len(step.plain_steps) // 2] if step.plain_steps else None,
        "guided_index": guided[-1] if guided else 0,
        "n_steps": n,
        "n_guided": len(guided),
        "n_plain": len(step.plain_steps),
        "configs": {
            "denoiser": asdict(dit_cfg),
            "critic": asdict(critic_cfg),
            "vae": asdict(vae_cfg),
            "step": step_cfg.to_dict(),
        },
        "params": {
            k: sum(p.numel() for p in m.parameters())
            for k, m in (("denoiser", den), ("critic", critic), ("vae", codec))
        },
    }


def step_inputs(xl: dict[str, Any], b: int, i: int, seed: int, device: torch.device, memory: int = 32) -> tuple:
    """(x, i, y, noise, memory, memory_mask) as a chunk's step gets them: memory rows are unit vectors."""
    step = xl["step"]
    g = torch.Generator().manual_seed(seed)
    mem = torch.randn(memory, step.feat_dim, generator=g)
    args = (
        torch.randn(b, *step.shape, generator=g),
        torch.tensor([i], dtype=torch.int32),
        torch.randint(0, 10, (b,), generator=g, dtype=torch.int32),
        torch.randn(b, *step.shape, generator=g),
        mem / mem.norm(dim=1, keepdim=True),
        torch.ones(b, memory),
    )
    return tuple(a.to(device) for a in args)


def timed(
    fn: Callable[..., Any], make: Callable[[int], tuple], device: torch.device, warmup: int, repeats: int
) -> list[float]:
    """Milliseconds per call (CUDA events on a GPU), inputs made before each timing starts."""
    with torch.no_grad():
        for k in range(warmup):
            fn(*make(k))
        times = []
        for k in range(repeats):
            args = make(warmup + k)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(*args)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn(*args)
                times.append(1e3 * (time.perf_counter() - t0))
    return times


@contextlib.contextmanager
def row_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
            into |= {
                "peak_bytes": int(peak),
                "resident_bytes": int(resident),
                "peak_above_resident_bytes": int(peak - resident),
                "peak_kind": "torch.cuda.max_memory_allocated, reset before the row",
            }


def check_xl_build(s: Smoke, _budget: float) -> dict[str, Any]:
    from igds_fast.bench.timing import measure_peak

    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    xl = build_xl(s.device, s.dry)
    s.state["xl"] = xl
    s.state["ms"] = {}
    f = xl["flops"]
    n: dict[str, Any] = {
        "what": f"{xl['name']}, {xl['dtype']}, random weights built on {s.device.type}; step: {xl['label']}",
        "build_s": round(xl["build_s"], 2),
        "params": xl["params"],
        "configs": xl["configs"],
        "flops_per_image": {
            k: f[k]
            for k in (
                "denoiser_forward_per_image",
                "denoiser_cfg_per_image",
                "critic_grad_per_image",
                "decode_per_image",
                "clip_guard_decoder_per_image",
            )
            if k in f
        },
        "flops_guided_step_per_image": f["per_step"],
        "clip_guard_bytes_per_image": xl["grad_bytes"],
        "clip_guard_bytes_how": "igds_fast.models.flops.decoder_grad_bytes: decoder activations its input-gradient "
        "keeps, bf16, a lower bound of the guided step's extra memory",
    }
    if s.device.type == "cuda":
        n["weights_bytes"] = int(torch.cuda.memory_allocated(s.device))
        n["build_peak_bytes"] = int(torch.cuda.max_memory_allocated(s.device))
    n["matmul_peak_tflops"] = measure_peak(s.device, getattr(torch, xl["dtype"]), 0.5) / 1e12
    n["summary"] = (
        f"{xl['name']}: {sum(xl['params'].values()) / 1e6:.0f}M params in {xl['build_s']:.1f} s; "
        f"{xl['label']}; {xl['dtype']} matmul peak {n['matmul_peak_tflops']:.3g} TFLOP/s; clip guard keeps "
        f"{gib(xl['grad_bytes'])}/image"
    )
    return n


def row_estimate_s(s: Smoke, kind: str, b: int) -> float:
    """Seconds a row will take, from the rows already measured (a guess before any)."""
    xl, ms = s.state.get("xl"), s.state.get("ms", {})
    reps = 3 if s.dry else 4

    def per_call(k: str) -> float | None:
        known = [(bb, v) for (kk, bb), v in ms.items() if kk == k]
        if not known:
            return None
        bb, v = max(known)
        return v * max(b / bb, 1.0) / 1e3

    plain = per_call("plain") or (0.05 if s.dry else 0.3 * b / 16)
    guided = per_call("guided") or (0.2 if s.dry else 1.5 * b / 16)
    if kind == "plain":
        return reps * plain + 1
    if kind == "guided":
        return reps * guided + 2
    n_plain, n_guided = (xl["n_plain"], xl["n_guided"]) if xl else (14, 6)  # the default step: 6 of 20 steps guided
    return 1.3 * (n_plain * plain + n_guided * guided) + 2


def check_xl_row(s: Smoke, kind: str, b: int, _budget: float) -> dict[str, Any]:
    xl, dev = s.state["xl"], s.device
    step, f = xl["step"], xl["flops"]
    n: dict[str, Any] = {"batch": b, "step_label": xl["label"]}
    predicted = xl["grad_bytes"] * b if step.cfg.clip_guard > 0 else 0  # the decoder's gradient, when guarded
    if kind != "plain":
        n["predicted_clip_guard_bytes"] = predicted
    if kind != "plain" and dev.type == "cuda":
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info(dev)[0]
        if predicted > free:
            raise Skip(
                f"does not fit: the clip guard keeps >= {gib(predicted)} of decoder activations at batch {b} "
                f"(decoder_grad_bytes), {gib(free)} free",
                n | {"free_bytes": int(free)},
            )
    warm, reps = (1, 2) if s.dry else (1, 3)
    if kind == "chain":
        return chain_row(s, b, n)
    with row_memory(dev, n):
        if kind == "plain":
            i = xl["plain_index"]
            if i is None:
                raise Skip("this step has no plain indices (guided everywhere)", n)
            times = timed(step.plain, lambda k: step_inputs(xl, b, i, 100 + k, dev)[:4], dev, warm, reps)
            work = b * f["denoiser_cfg_per_image"]
            n["what"] = (
                f"plain step at index {i}: denoiser CFG pass on {2 * b} + update, no critic, no clip guard "
                f"(runs at {xl['n_plain']} of {xl['n_steps']} steps)"
            )
        elif kind == "guided":
            i = xl["guided_index"]
            times = timed(step, lambda k: step_inputs(xl, b, i, 200 + k, dev), dev, warm, reps)
            work = b * f["per_step"]
            n["what"] = (
                f"default guided step at index {i}: CFG pass + critic gradient + clip guard "
                f"{step.cfg.clip_guard:g} (decoder forward and input-gradient); memory 32 rows"
            )
    med = sorted(times)[len(times) // 2]
    s.state["ms"][(kind, b)] = med
    n |= {"ms": med, "ms_all": times, "flops": work, "tflops": work / (med / 1e3) / 1e12}
    n["img_per_s_step"] = b / med * 1e3
    mem = f", peak {gib(n.get('peak_bytes'))} ({gib(n.get('peak_above_resident_bytes'))} above resident)"
    n["summary"] = f"{med:.1f} ms/step, {n['tflops']:.3g} TFLOP/s (formula FLOPs){mem if dev.type == 'cuda' else ''}"
    return n


def chain_row(s: Smoke, b: int, n: dict[str, Any]) -> dict[str, Any]:
    from igds_fast.sampling.chain import run_chain
    from igds_fast.seeds import SampleNoise, sample_seed

    xl, dev = s.state["xl"], s.device
    step, f = xl["step"], xl["flops"]
    labels = torch.arange(b, dtype=torch.int32) % 10
    noise = SampleNoise([sample_seed(0, int(y), k) for k, y in enumerate(labels)], step.shape, dev)
    g = torch.Generator().manual_seed(5)
    mem = torch.randn(32, step.feat_dim, generator=g)
    mem, mask = (mem / mem.norm(dim=1, keepdim=True)).to(dev), torch.ones(b, 32, device=dev)
    events: list[Any] = []
    order: list[int] = []
    cuda = dev.type == "cuda"

    def mark(i: int, _x: torch.Tensor) -> None:
        order.append(i)
        if cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            events.append(ev)
        else:
            events.append(time.perf_counter())

    with row_memory(dev, n):
        if cuda:
            torch.cuda.synchronize(dev)
            first = torch.cuda.Event(enable_timing=True)
            first.record()
        t0 = time.perf_counter()
        res = run_chain(
            step,
            xl["n_steps"],
            labels,
            noise,
            memory=lambda i: (mem, mask),
            on_step=mark,
            plain=step.plain,
            plain_steps=step.plain_steps,
        )
        if cuda:
            torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
    if cuda:
        marks = [first, *events]
        per_step = [marks[k].elapsed_time(marks[k + 1]) for k in range(len(events))]
    else:
        stamps = [t0, *events]
        per_step = [1e3 * (stamps[k + 1] - stamps[k]) for k in range(len(events))]
    plain_ms = sum(t for i, t in zip(order, per_step, strict=True) if i in step.plain_steps)
    guided_ms = sum(per_step) - plain_ms
    work = b * (xl["n_plain"] * f["denoiser_cfg_per_image"] + (xl["n_steps"] - xl["n_plain"]) * f["per_step"])
    finite = bool(torch.isfinite(res.x0).all())
    n |= {
        "what": f"run_chain of the default step: {xl['n_steps']} steps, {xl['n_plain']} plain + "
        f"{xl['n_steps'] - xl['n_plain']} guided (clip guard {step.cfg.clip_guard:g}), per-sample noise streams "
        "(SampleNoise, drawn on the CPU as distill draws them), memory 32 rows; no decode",
        "chain_s": wall,
        "chain_event_ms": sum(per_step),
        "step_ms_in_order": per_step,
        "step_index_order": order,
        "plain_steps_ms": plain_ms,
        "guided_steps_ms": guided_ms,
        "img_per_s": b / wall,
        "flops": work,
        "tflops": work / wall / 1e12,
        "x0_finite": finite,
    }
    if not finite:
        raise RuntimeError("the chain's final latents are not finite")
    n["summary"] = (
        f"{wall:.2f} s for {xl['n_steps']} steps ({plain_ms / 1e3:.2f} s plain, {guided_ms / 1e3:.2f} s "
        f"guided), {n['img_per_s']:.2f} img/s without decode, {n['tflops']:.3g} TFLOP/s"
        + (f", peak {gib(n.get('peak_bytes'))}" if cuda else "")
    )
    return n


# ---- (d) profiler --------------------------------------------------------------------------------


def check_profile(s: Smoke, _budget: float) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    xl, dev = s.state["xl"], s.device
    batches = DRY_BATCHES if s.dry else GPU_BATCHES
    b = next((bb for bb in batches if s.status.get(f"xl/guided b{bb}") == "ok"), batches[0])
    args = step_inputs(xl, b, xl["guided_index"], 300, dev)
    cuda = dev.type == "cuda"
    with torch.no_grad():
        xl["step"](*args)  # warm
        if cuda:
            torch.cuda.synchronize(dev)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            xl["step"](*args)
            if cuda:
                torch.cuda.synchronize(dev)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if (getattr(e, key, 0) or 0) > 0]
    total = sum(getattr(e, key) for e in events)
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:10]
    rows = [
        {
            "name": e.key[:200],
            "calls": e.count,
            "self_ms": getattr(e, key) / 1e3,
            "share": getattr(e, key) / total if total else None,
        }
        for e in top
    ]
    head = ", ".join(f"{r['name'][:40]} {r['share']:.0%}" for r in rows[:3])
    return {
        "what": f"one default guided step at batch {b} (index {xl['guided_index']}), torch.profiler, "
        + ("kernels by self CUDA time" if cuda else "ops by self CPU time (dry run)"),
        "batch": b,
        "total_ms": total / 1e3,
        "top": rows,
        "summary": f"b{b}: {total / 1e3:.1f} ms {'on the GPU' if cuda else 'CPU'}; top: {head}",
    }


# ---- (e) torch.compile, (f) AOTInductor: each in a child process --------------------------------


def cudagraph_facts(dev: torch.device) -> dict[str, Any]:
    """What can be verified of Inductor's CUDA graphs: its skip counters, the graphs its tree manager
    recorded (torch internals: best effort)."""
    facts: dict[str, Any] = {}
    try:
        from torch._dynamo.utils import counters

        facts["inductor_counters"] = {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
    except Exception as e:
        facts["inductor_counters"] = f"unavailable: {first_line(e)}"
    try:
        from torch._inductor import cudagraph_trees

        mgr = cudagraph_trees.get_container(dev.index or 0).tree_manager
        if mgr is None:
            facts["graphs_recorded"] = 0
        else:
            seen, todo = 0, [n for nodes in mgr.roots.values() for n in nodes]
            while todo:
                node = todo.pop()
                seen += 1
                todo += [c for kids in getattr(node, "children", {}).values() for c in kids]
            facts["graphs_recorded"] = seen
    except Exception as e:
        facts["graphs_recorded"] = f"unknown: {first_line(e)}"
    return facts


def child_compile(s: Smoke, _budget: float) -> dict[str, Any]:
    from igds_fast.backends.compiled import jit_step
    from igds_fast.backends.io import rel_error

    dev = s.device
    xl = build_xl(dev, s.dry)
    step, b, i = xl["step"], (2 if s.dry else 16), xl["plain_index"]
    make = lambda k: step_inputs(xl, b, i, 400 + k, dev)[:4]  # noqa: E731
    eager = timed(step.plain, make, dev, 1, 5)
    mode = "reduce-overhead" if dev.type == "cuda" else None
    t0 = time.perf_counter()
    fn = jit_step(step, make(0), mode, plain=True)
    trace_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(*make(1))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        compile_s = time.perf_counter() - t0
        for k in range(3):  # reduce-overhead: warm-up, record, then replays
            fn(*make(2 + k))
        # A replayed graph writes every call's output where the previous one's is, even while that one is
        # still referenced; two live eager outputs never share memory.
        kept = fn(*make(5))
        ptr = kept[0].data_ptr()
        again = fn(*make(6))
        same = again[0].data_ptr() == ptr
        del kept, again
        args = make(9)
        out = fn(*args)[0].clone()
        ref = step.plain(*args)[0]
    compiled = timed(fn, make, dev, 1, 10)
    n: dict[str, Any] = {
        "what": f"torch.compile(mode={mode or 'default'}) of the traced plain step (backends.compiled.jit_step, "
        f"plain=True) of {xl['name']}, batch {b}, {xl['dtype']}",
        "batch": b,
        "trace_s": trace_s,
        "compile_s": compile_s,
        "eager_ms": sorted(eager)[len(eager) // 2],
        "compiled_ms": sorted(compiled)[len(compiled) // 2],
        "rel_error_vs_eager": rel_error(out, ref),
        "same_output_buffer_while_kept": same,
    }
    n["speedup"] = n["eager_ms"] / n["compiled_ms"]
    if dev.type == "cuda":
        facts = cudagraph_facts(dev)
        skips = facts.get("inductor_counters", {})
        skipped = isinstance(skips, dict) and any(v for k, v in skips.items() if "skip" in k)
        n["cudagraphs"] = facts | {
            "used": bool(same and not skipped),
            "how": "used = a call's output landed in the buffer of the previous call's output while that one "
            "was still referenced (a replayed graph's static output) and Inductor counted no cudagraph skip",
        }
        cg = "CUDA graphs used" if n["cudagraphs"]["used"] else "CUDA graphs NOT used"
    else:
        n["cudagraphs"] = {"used": False, "how": "not applicable on the CPU (dry run: mode default)"}
        cg = "no CUDA graphs on the CPU"
    n["summary"] = (
        f"compile {compile_s:.1f} s; {n['compiled_ms']:.2f} ms vs eager {n['eager_ms']:.2f} ms "
        f"({n['speedup']:.2f}x); {cg}; rel error {n['rel_error_vs_eager']:.2e}"
    )
    return n


def child_aoti(s: Smoke, _budget: float) -> dict[str, Any]:
    from igds_fast.backends.compiled import build_plain_package, build_unavailable, load_package
    from igds_fast.backends.io import rel_error
    from igds_fast.config import StepConfig
    from igds_fast.models.embedded import resolve_models
    from igds_fast.sampling.pipeline import build_pipeline

    dev = s.device
    reason = build_unavailable(dev)
    if reason:
        raise Skip(reason)
    if s.dry:  # the compile check's tiny stand-in: Inductor's kernel cache holds most of it by now
        dtype, model = "fp32", "the dry run's tiny DiT"
        step = build_xl(dev, True)["step"]
    else:
        dtype, model = "bf16", "the embedded model"
        paths = resolve_models(None, None, None, "igds")
        step = build_pipeline(paths.denoiser, paths.vae, paths.critics, StepConfig(), device=str(dev), dtype=dtype).step
    if not step.plain_steps:
        raise Skip(f"{model}'s default step has no plain indices")
    b, i = (2 if s.dry else 4), sorted(step.plain_steps)[0]
    labels = list(step.critic.config.class_ids) if step.critic is not None else list(range(step.num_classes))
    g = torch.Generator().manual_seed(7)

    def make(k: int) -> tuple:
        g.manual_seed(500 + k)
        x = torch.randn(b, *step.shape, generator=g)
        y = torch.tensor(labels, dtype=torch.int32)[torch.randint(0, len(labels), (b,), generator=g)]
        args = (x, torch.tensor([i], dtype=torch.int32), y, torch.randn(b, *step.shape, generator=g))
        return tuple(a.to(dev) for a in args)

    with tempfile.TemporaryDirectory(prefix="igds-smoke-aoti-") as tmp:
        full = (*make(0), torch.zeros(1, step.feat_dim, device=dev), torch.zeros(b, 1, device=dev))
        t0 = time.perf_counter()
        path = build_plain_package(step, full, Path(tmp) / "plain.pt2")
        build_s = time.perf_counter() - t0
        size = path.stat().st_size
        t0 = time.perf_counter()
        fn = load_package(path, dev)
        load_s = time.perf_counter() - t0
        args = make(1)
        with torch.no_grad():
            out = fn(*args)[0].clone()
            ref = step.plain(*args)[0]
        aoti = timed(fn, make, dev, 1, 5)
        eager = timed(step.plain, make, dev, 1, 5)
    err = rel_error(out, ref)
    bound = 1e-3 if dtype == "fp32" else 5e-2
    n = {
        "what": f"AOTInductor package of {model}'s plain step (backends.compiled.build_plain_package), "
        f"{dtype}, batch {b}, built and reloaded (load_package on {dev}) in this process",
        "build_s": build_s,
        "load_s": load_s,
        "package_bytes": size,
        "aoti_ms": sorted(aoti)[len(aoti) // 2],
        "eager_ms": sorted(eager)[len(eager) // 2],
        "rel_error_vs_eager": err,
        "bound": bound,
        "toolkit": None,
    }
    if dev.type == "cuda":
        from igds_fast.backends.compiled import cuda_toolkit

        n["toolkit"] = cuda_toolkit()
    n["summary"] = (
        f"built in {build_s:.1f} s, loaded in {load_s:.2f} s; {n['aoti_ms']:.2f} ms vs eager "
        f"{n['eager_ms']:.2f} ms; rel error {err:.2e} (bound {bound:g})"
    )
    if not err <= bound:
        raise RuntimeError(f"the package's output differs from eager by {err:.3g} (bound {bound:g})")
    return n


CHILDREN: dict[str, Callable[[Smoke, float], dict[str, Any]]] = {"compile": child_compile, "aoti": child_aoti}


# ---- the run -------------------------------------------------------------------------------------


def run_all(s: Smoke) -> None:
    s.check("environment", lambda b: check_environment(s, b))
    if s.status.get("environment") == "failed" and not s.dry and not torch.cuda.is_available():
        s.stop("environment", "no CUDA device visible to torch: nothing else can run (use --dry-run on a CPU)")
    for name in ("compiled", "onnxruntime", "tensorrt"):
        s.check(f"backend/{name}", lambda _b, n=name: check_backend(s, n))
    s.check("distill", lambda b: check_distill(s, b))
    xl_wanted = s.only is None or any(o.startswith("xl") or o == "profile" for o in s.only)
    if xl_wanted:  # what the XL rows and the profile run on
        s.check("xl/build", lambda b: check_xl_build(s, b), force=True)
    for b in DRY_BATCHES if s.dry else GPU_BATCHES:
        for kind in ("plain", "guided", "chain"):
            name = f"xl/{kind} b{b}"
            need = row_estimate_s(s, kind, b) + s.kept_for_later()
            s.check(name, lambda bud, k=kind, bb=b: check_xl_row(s, k, bb, bud), need_s=need, needs=("xl/build",))
    s.check("profile", lambda b: check_profile(s, b), needs=("xl/build",))
    s.state.pop("xl", None)  # the children build their own models: free the GPU for them
    if s.device.type == "cuda":
        torch.cuda.empty_cache()
    for name in CHILDREN:
        s.check(name, lambda b, n=name: s.in_child(n, b))


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_smoke"),
        help="results folder [$OUT, else runs/gpu_smoke]",
    )
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run [300]")
    ap.add_argument("--dry-run", action="store_true", help="the same checks on the CPU at tiny sizes")
    ap.add_argument("--pretend-missing", default="", help=f"comma list of: {', '.join(PRETENDABLE)}")
    ap.add_argument("--only", default=None, help="comma list of checks (or prefixes: xl, backend) to run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fail-in", default=None, help=argparse.SUPPRESS)  # tests: a CUDA error in this check
    a = ap.parse_args(argv)
    a.pretend_missing = [x.strip() for x in a.pretend_missing.split(",") if x.strip()]
    bad = [x for x in a.pretend_missing if x not in PRETENDABLE]
    if bad:
        ap.error(f"--pretend-missing {bad[0]}: use {', '.join(PRETENDABLE)}")
    a.only = [x.strip() for x in a.only.split(",") if x.strip()] if a.only else None
    if a.child is not None and a.child not in CHILDREN:
        ap.error(f"--child {a.child}: use {', '.join(CHILDREN)}")
    if a.deadline <= 0:
        ap.error("--deadline must be positive")
    return a


def main(argv: list[str]) -> int:
    args = parse(argv)
    pretend_missing(set(args.pretend_missing))
    with contextlib.suppress(Exception):  # a broken igds_fast import is the checks' to report
        cuda_toolkit_patch(set(args.pretend_missing))
    s = Smoke(args)
    if args.child is not None:  # one check, in this (child) process: its line in --out
        s.only = None
        name = args.child
        s.check(name, lambda b: CHILDREN[name](s, b), need_s=0)
        return 0
    made_cache = None
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):  # a killed compile may leave a truncated file in a cache
        made_cache = tempfile.mkdtemp(prefix="igds-smoke-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = made_cache
    mode = "DRY RUN on the CPU, tiny sizes" if s.dry else "GPU"
    print(f"== igds-fast GPU smoke check ({mode}), deadline {args.deadline:.0f} s, results in {s.jsonl}", flush=True)
    try:
        run_all(s)
    finally:
        if made_cache:
            shutil.rmtree(made_cache, ignore_errors=True)
    counts = {k: list(s.status.values()).count(k) for k in ("ok", "skipped", "failed")}
    failed = counts["failed"] > 0 or s.stopped is not None
    s.emit(
        {
            "check": "done",
            "status": "failed" if failed else "ok",
            "seconds": round(time.monotonic() - s.start, 2),
            "counts": counts,
            "stopped_at": s.stopped,
            "dry_run": s.dry,
            "deadline_s": args.deadline,
            "summary": f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed"
            + (f"; stopped at {s.stopped}" if s.stopped else ""),
        }
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

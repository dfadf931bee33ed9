"""``igds-fast bench``: guided-step and end-to-end throughput of every backend, in one run.

For each row: ms per guided step (median over repeats, device-synchronised, fresh random inputs
each repeat), img/s of a full N-step chain (``sampling.run_chain``, as distill runs it) with decode
and PNG encoding, a per-stage split (eager only: exported engines run the step as one fused graph),
peak memory, FLOPs per step, achieved FLOP/s against a peak measured in the same run, the error
against the eager fp32 step, and ratios vs ``eager`` and ``eager-ref``. A row that fails is
recorded with its error and the run goes on; the JSON is rewritten before and after every row, so
a run killed by a time limit leaves its finished rows and a "running" row for the one it cut off
(SIGKILL), or a "timed out" row (SIGTERM, what ``timeout`` sends first: ``BenchTerminated``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..backends.io import STEP_OUTPUTS, rel_error
from ..config import DTYPES, StepConfig, resolve_device
from ..guidance.step import GuidedStep
from ..imageio import encode_image, to_uint8
from ..machine import library_versions, machine_facts
from ..models.dit import DiT, DiTConfig
from ..models.flops import counted_flops, decoder_flops, decoder_grad_bytes, dit_forward_flops
from ..models.vae import PixelSpace
from ..sampling.chain import run_chain
from ..sampling.engine import plain_path
from ..seeds import SampleNoise, sample_seed
from .config import SCHEMA, BenchConfig
from .models import BenchModels, build_models
from .runners import BenchContext, Runner, Skipped, make_runner, step_label, tf32
from .timing import free_device_memory, measure_peak, peak_memory, sticky_cuda_error, sync, time_median


def step_flops(models: BenchModels, cfg: BenchConfig, step: GuidedStep, step_cfg: StepConfig) -> dict[str, Any]:
    den, critic = models.denoiser, models.critic
    if isinstance(den, DiT):
        fwd, how = dit_forward_flops(den.config), "formula (dit_forward_flops)"
    else:
        x = torch.zeros(1, *step.shape)
        fwd, how = counted_flops(lambda: den(x, torch.zeros(1), torch.zeros(1, dtype=torch.long))), "counted"
    passes = 1 if step_cfg.cfg_scale == 1.0 else 2
    crit = critic.flops_per_image() if critic is not None else 0
    b = cfg.batch_size
    out = {
        "denoiser_forward_per_image": fwd,
        "denoiser_method": how,
        "denoiser_cfg_per_image": passes * fwd,
        "critic_forward_per_image": crit,
        # forward + input-gradient ~ 3 forwards (the backward of a matmul costs two)
        "critic_grad_per_image": 3 * crit,
        "per_step": b * (passes * fwd + 3 * crit),
        "critic_vs_denoiser_cfg": 3 * crit / (passes * fwd),
    }
    if critic is not None and den.in_channels == 4:
        xl = dit_forward_flops(DiTConfig.from_arch("DiT-XL/2", input_size=den.input_size, in_channels=4))
        out["critic_vs_dit_xl2_cfg"] = 3 * crit / (2 * xl)
    if not isinstance(models.codec, PixelSpace):
        out["decode_per_image"] = decoder_flops(models.codec, step.shape)
        if step.decoder is not None:  # the clip guard: the decoder's forward and input-gradient (~ a forward)
            out["clip_guard_decoder_per_image"] = 2 * out["decode_per_image"]
            out["per_step"] += b * out["clip_guard_decoder_per_image"]
    out["per_image"] = chain_cost(step, out, passes)
    return out


def chain_cost(step: GuidedStep, flops: dict[str, Any], passes: int) -> dict[str, Any]:
    """What one image costs over the whole chain: denoiser passes (``passes`` a step), and FLOPs split
    into denoiser, critic and decoder (the clip guard's and the final decode), beside the unguided
    sampler's at the same steps. The critic and the clip guard run at the steps that are not the
    step's ``plain_steps`` (the guided ones)."""
    steps = len(step.schedule)
    guided = steps - len(step.plain_steps) if step.critic is not None else 0
    denoiser = steps * flops["denoiser_cfg_per_image"]
    critic = guided * flops["critic_grad_per_image"]
    decode = flops.get("decode_per_image", 0)
    decoder = guided * flops.get("clip_guard_decoder_per_image", 0) + decode
    total = denoiser + critic + decoder
    return {
        "steps": steps,
        "guided_steps": guided,
        "denoiser_passes": steps * passes,
        "flops": {"denoiser": denoiser, "critic": critic, "decoder": decoder, "total": total},
        "unguided_flops": denoiser + decode,
        "over_unguided": total / (denoiser + decode),
    }


def run_e2e(ctx: BenchContext, runner: Runner) -> dict[str, float]:
    """One batch through all N steps with ``run_chain`` (per-sample noise streams, as distill draws
    them), decode, uint8, PNG on a thread pool: what a distill run does per chunk. eager-ref runs
    ``--ref-images`` of the batch when given: it takes one image at a time, so its rate is per image."""
    cfg, engine = ctx.cfg, runner.engine
    n = cfg.batch_size
    if engine.backend == "eager-ref" and cfg.ref_images is not None:
        n = min(n, cfg.ref_images)
    labels = torch.tensor([ctx.labels[k % len(ctx.labels)] for k in range(n)], dtype=torch.int32)
    noise = SampleNoise([sample_seed(cfg.seed, int(y), k) for k, y in enumerate(labels)], engine.shape, ctx.device)
    sync(ctx.device)
    t0 = time.perf_counter()
    plain, plain_steps = plain_path(engine)  # as distill runs it (eager: no critic outside the window)
    res = run_chain(engine.step, cfg.steps, labels, noise, plain=plain, plain_steps=plain_steps)
    sync(ctx.device)
    t1 = time.perf_counter()
    images = to_uint8(engine.decode(res.x0)).cpu().numpy()
    t2 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=cfg.png_workers) as pool:
        sizes = [len(b) for b in pool.map(lambda im: encode_image(im, "png"), images)]
    t3 = time.perf_counter()
    return {
        "steps": cfg.steps,
        "images": n,
        "chain_s": t1 - t0,
        "decode_s": t2 - t1,
        "png_s": t3 - t2,
        "total_s": t3 - t0,
        "img_s": n / (t3 - t0),
        "png_bytes_mean": statistics.mean(sizes),
    }


def parity(ctx: BenchContext, runner: Runner, n: int) -> dict[str, float]:
    """Largest relative error of each output against the eager fp32 GuidedStep (TF32 off for matmuls
    and convolutions: true fp32), fresh inputs; with a plain step, also its x_{t-1} at plain indices
    against the full step's ("plain_x_prev")."""
    ref_step = ctx.pipeline("fp32").step
    plain, plain_steps = plain_path(runner.engine)
    worst: dict[str, float] = {}
    for k in range(n):
        args = ctx.inputs(10_000 + k)
        with torch.no_grad(), tf32(False):
            ref = ref_step(*args)
        out = runner.engine.step(*args)
        for name, o, r in zip(STEP_OUTPUTS, out, ref, strict=True):
            worst[name] = max(worst.get(name, 0.0), rel_error(o, r))
        if plain is not None:
            args = ctx.inputs(20_000 + k, i=sorted(plain_steps)[k % len(plain_steps)])
            with torch.no_grad(), tf32(False):
                ref = ref_step(*args)
            worst["plain_x_prev"] = max(worst.get("plain_x_prev", 0.0), rel_error(plain(*args)[0], ref[0]))
    return worst


def cudagraph_counters(before: dict[str, int] | None = None) -> dict[str, int]:
    """Inductor's CUDA graph counters (e.g. ``cudagraph_skips``: graphs it ran without CUDA graphs, and
    why is in its log), as counted since ``before``."""
    from torch._dynamo.utils import counters

    now = {k: int(v) for k, v in counters["inductor"].items() if "cudagraph" in k}
    return {k: v - (before or {}).get(k, 0) for k, v in now.items()}


def clip_guard_fits(ctx: BenchContext, name: str) -> None:
    """Skip a row (before it allocates anything) whose clip guard cannot fit on the GPU: the decoder
    activations its input-gradient keeps (``decoder_grad_bytes``, a lower bound of the step's
    peak) for the row's batch, against the device's free memory."""
    step_cfg = ctx.step_cfg
    if ctx.device.type != "cuda" or step_cfg.guidance != "igds" or step_cfg.clip_guard == 0:
        return
    per_image = decoder_grad_bytes(ctx.models.codec, ctx.pipeline("fp32").step.shape)  # fp32 weights
    if ctx.cfg.row_dtype(name) != "fp32":
        per_image //= 2
    batch = 1 if name.startswith("eager-ref") else ctx.cfg.batch_size
    free, _total = torch.cuda.mem_get_info(ctx.device)
    if per_image * batch > free:
        raise Skipped(
            f"the clip guard keeps >= {per_image * batch / 2**30:.1f} GiB of decoder activations per guided step "
            f"at batch {batch} ({per_image / 2**30:.2f} GiB per image, decoder_grad_bytes); {free / 2**30:.1f} GiB "
            "free: use a smaller --batch-size or --clip-guard 0"
        )


def bench_backend(ctx: BenchContext, name: str, flops: dict[str, Any], peak: float) -> dict[str, Any]:
    cfg, dev = ctx.cfg, ctx.device
    row: dict[str, Any] = {"status": "ok"}
    try:
        clip_guard_fits(ctx, name)
        cg_before = cudagraph_counters()
        with peak_memory(dev, row):
            t0 = time.perf_counter()
            runner = make_runner(ctx, name)
            runner.engine.step(*ctx.inputs(0))  # compiles lazily-compiled backends
            plain, plain_steps = plain_path(runner.engine)
            at_plain = sorted(plain_steps)
            if plain is not None:  # its graph too, outside the timings
                plain(*ctx.inputs(0, i=at_plain[0]))
            sync(dev)
            row["build_s"] = time.perf_counter() - t0
            row["precision"] = runner.precision
            row["notes"] = runner.notes
            times = time_median(runner.engine.step, ctx.inputs, dev, cfg.warmup, cfg.repeats)
            row["step_ms"] = 1e3 * statistics.median(times)
            row["step_ms_all"] = [1e3 * t for t in times]
            row["step_ms_per_image"] = row["step_ms"] / cfg.batch_size
            if plain is not None:  # the denoiser-only step run outside the window (plain_path)
                make = lambda k: ctx.inputs(k, i=at_plain[k % len(at_plain)])  # noqa: E731
                row["plain_step_ms"] = 1e3 * statistics.median(time_median(plain, make, dev, cfg.warmup, cfg.repeats))
                row["plain_steps"] = len(at_plain)
            row["step_tflops"] = flops["per_step"] / (row["step_ms"] / 1e3) / 1e12
            row["peak_fraction"] = row["step_tflops"] * 1e12 / peak
            if name.startswith("torch-compile-cg"):  # whether Inductor kept CUDA graphs, or skipped them
                row["cudagraph_counters"] = cudagraph_counters(cg_before)
            row["stages_ms"] = None
            if runner.stages is not None:
                row["stages_ms"] = {
                    k: 1e3 * statistics.median(time_median(fn, make, dev, 1, cfg.repeats))
                    for k, (fn, make) in runner.stages.items()
                }
            row["max_rel_error_vs_eager_fp32"] = parity(ctx, runner, cfg.parity_inputs)
            if name in cfg.e2e:
                e2e = run_e2e(ctx, runner)
                share = e2e["images"] / cfg.batch_size
                work = share * cfg.steps * flops["per_step"] + e2e["images"] * flops.get("decode_per_image", 0)
                e2e["tflops"] = work / e2e["total_s"] / 1e12
                row["e2e"] = e2e
    except Skipped as e:
        return {"status": "skipped", "reason": str(e)}
    except Exception as e:  # a failing backend is a result, not a crash
        msg = str(e).strip().splitlines()[0][:500] if str(e).strip() else ""
        row.update(status="error", error=f"{type(e).__name__}: {msg}")
        sticky = sticky_cuda_error(e, dev)
        if sticky:  # nothing more can run on this GPU in this process
            row["sticky_cuda_error"] = sticky
    return row


class BenchTerminated(BaseException):
    """SIGTERM during a bench run (``timeout`` sends it at a time limit). A BaseException, so a row's
    ``except Exception`` does not record it as that backend's error."""


_TERMINATED = threading.Event()  # set by the handler: library code may swallow the exception itself


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into ``BenchTerminated`` while the bench runs (main thread only: signal handlers
    cannot be set elsewhere, and then SIGTERM keeps its default)."""
    _TERMINATED.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        _TERMINATED.set()
        raise BenchTerminated(signum)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Speedups against eager and eager-ref, from numbers measured in this run."""
    for base in ("eager", "eager-ref"):
        ref = results.get(base, {})
        for row in results.values():
            if row.get("status") != "ok" or ref.get("status") != "ok":
                continue
            key = base.replace("-", "_")
            row[f"step_speedup_vs_{key}"] = ref["step_ms"] / row["step_ms"]
            if "e2e" in row and "e2e" in ref:
                row[f"e2e_speedup_vs_{key}"] = row["e2e"]["img_s"] / ref["e2e"]["img_s"]


def run_bench(
    cfg: BenchConfig,
    command: str | None = None,
    json_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every row of ``cfg``; the JSON (when asked) is rewritten before and after each row. On
    SIGTERM the row it interrupted is written as "timed out" and ``BenchTerminated`` propagates."""
    with sigterm_raises():
        return _run_bench(cfg, command, json_path, log)


def _run_bench(
    cfg: BenchConfig, command: str | None, json_path: Path | None, log: Callable[[str], None]
) -> dict[str, Any]:
    cfg.validate()
    dev = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_facts(dev),
        "versions": library_versions(),
        "config": asdict(cfg),
        "step": None,
        "models": None,
        "flops": None,
        "peak": None,
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="igds-bench-") as tmp:
        models = build_models(cfg, Path(tmp))
        result["models"] = models.info
        ctx = BenchContext(cfg, models, Path(tmp))
        result["step"] = ctx.step_cfg.to_dict()
        result["step_label"] = step_label(ctx.pipeline("fp32").step)
        result["tf32"] = {
            "eager-ref": "on (matmuls and cuDNN convolutions), as the reference workflow runs",
            "parity reference (eager fp32)": "off (matmuls and cuDNN convolutions)",
            "other rows": "torch's settings at the start: matmuls "
            f"{'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}, cuDNN "
            f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}",
        }
        result["flops"] = step_flops(models, cfg, ctx.pipeline("fp32").step, ctx.step_cfg)
        cost = result["flops"]["per_image"]
        log(
            f"bench: per image {cost['denoiser_passes']} denoiser passes, {cost['flops']['total'] / 1e9:.1f} GFLOP "
            + "("
            + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in cost["flops"].items() if k != "total")
            + "), "
            + f"{cost['over_unguided']:.3f}x the unguided sampler's at {cost['steps']} steps"
        )
        if cfg.peak_tflops is not None:
            peak, how = cfg.peak_tflops * 1e12, "given (--peak-tflops)"
        else:
            peak, how = measure_peak(dev, DTYPES[cfg.dtype]), f"measured: square matmul, {cfg.dtype}, this device"
        result["peak"] = {"tflops": peak / 1e12, "how": how}
        for k, name in enumerate(cfg.backends):
            log(f"bench: {name} ...")
            started = time.time()
            try:
                result["results"][name] = {"status": "running", "started": started}
                if json_path is not None:
                    write_json(result, json_path)
                sub = Path(tmp) / name.replace("-", "_").replace("@", "_")
                sub.mkdir()
                ctx.tmp = sub
                row = bench_backend(ctx, name, flops=result["flops"], peak=peak)
                if _TERMINATED.is_set():  # the signal came, but a library turned it into its own error
                    raise BenchTerminated(signal.SIGTERM)
            except BenchTerminated:
                result["results"][name] = {
                    "status": "timed out",
                    "started": started,
                    "after_s": time.time() - started,
                    "reason": "SIGTERM (a time limit) while this row ran",
                }
                log(f"bench: {name}: timed out after {time.time() - started:.0f} s")
                if json_path is not None:
                    write_json(result, json_path)
                raise
            result["results"][name] = row
            add_ratios(result["results"])
            log(f"bench: {name}: " + summary(row))
            later = cfg.backends[k + 1 :]
            if row.get("sticky_cuda_error"):  # the CUDA context is gone: later rows cannot run here
                for rest in later:
                    result["results"][rest] = {
                        "status": "skipped",
                        "reason": f"not run: a CUDA error in {name} left the device unusable in this process "
                        f"({row['sticky_cuda_error']})",
                    }
                    log(f"bench: {rest}: " + summary(result["results"][rest]))
            if json_path is not None:
                write_json(result, json_path)
            if row.get("sticky_cuda_error"):
                break
            # free what this row held before the next one measures its own peak
            ctx.release_pipelines({"fp32", *(cfg.row_dtype(r) for r in later)})
            free_device_memory(dev, compiled=name.startswith("torch-compile"))
    return result


def summary(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('reason') or row.get('error')}"
    text = f"{row['step_ms']:.1f} ms/step, {row['step_tflops']:.3f} TFLOP/s"
    if "e2e" in row:
        text += f", {row['e2e']['img_s']:.2f} img/s end to end"
    return text


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path

"""The Python API: ``distill``, ``export``, ``sample``, ``evaluate`` and ``quality`` (docs/api.md).

Each function takes keyword arguments named like its command's options (``ipc=2``, ``steps=10``,
``guidance_scale=0.4`` or ``step=StepConfig(...)``), has the command's defaults, raises
``igds_fast.errors.UserError`` (one line: what is wrong and what to do) for bad input, and returns a
result dataclass. The commands call these same functions: the command line parses and prints, the
API decides.

Process settings. Busy-waiting OpenMP threads collapse on shared cores (``cli/_env.py``), and OpenMP
reads ``OMP_WAIT_POLICY`` once, when torch loads. So this module imports nothing that loads torch
at import time: each function first sets ``OMP_WAIT_POLICY=PASSIVE`` (unless the user chose a
policy, or torch is loaded already: then it is too late and nothing is changed), and only then
imports the library (the reason for the imports inside the functions). ``threads=`` is applied with
``torch.set_num_threads`` at any time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:  # (at run time these load torch: imported inside the functions, after the process settings)
    import numpy as np
    import torch

    from .config import StepConfig

RECIPES = Path(__file__).resolve().parent / "recipes"
DEFAULT_OUT = Path("distilled")

# The distill options a job file or a call may give (by option name, '_' for '-'), with the Python
# types each accepts; the step's fields come on top (config.STEP_FIELDS). A job file may also spell
# image_format as the command line does: ``format``.
_PATH = (str, Path)
DISTILL_OPTIONS: dict[str, tuple[type, ...]] = {
    "out": _PATH,
    "subset": (str,),
    "classes": (str, list, tuple),
    "classes_file": _PATH,
    "ipc": (int,),
    "batch_size": (int,),
    "seed": (int,),
    "engines": _PATH,
    "backend": (str,),
    "engine_cache": _PATH,
    "denoiser": _PATH,
    "vae": _PATH,
    "critics": _PATH,
    "image_format": (str,),
    "resolution": (int,),
    "shard": (str,),
    "ray": (str,),
    "overwrite": (bool,),
    "wait": (bool,),
    "device": (str,),
    "dtype": (str,),
    "log_json": _PATH,
    "progress": (bool,),
    "threads": (int,),
}
ALIASES = {"format": "image_format"}
# Export settings besides the step's (backends.build.EXPORT_DEFAULTS), as a recipe or a call gives them.
EXPORT_OPTIONS: dict[str, tuple[type, ...]] = {
    "denoiser": _PATH,
    "vae": _PATH,
    "critics": _PATH,
    "batch_size": (int,),
    "memory_size": (int,),
    "ipc": (int,),
    "precision": (str,),
    "backend": (str,),
    "opset": (int,),
    "split": (bool,),
    "device": (str,),
}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


# ----------------------------------------------------------------------------------------------------
# Results


@dataclass
class DistillResult:
    """What ``distill`` did. ``images``: the images the set holds for the classes this run covered (all
    its classes once complete; a shard's own otherwise), ``images_made``: those sampled by this call."""

    out: Path
    images: int
    images_made: int
    classes: list[str]
    ipc: int
    complete: bool  # False: other shards' classes are still missing (the command's exit code 3)
    nothing_to_do: bool  # the folder held this finished job already: no weights were loaded
    backend: str
    precision: str
    step: StepConfig
    seconds: float  # the whole call: checks, loading or exporting the engine, sampling, writing
    sampling_seconds: float  # sampling and writing only
    img_per_s: float | None
    repaired: list[str]
    metadata: Path | None  # the set's table of images (<out>/metadata.parquet) once it is complete
    run_json: Path | None  # <out>/run.json once the set is complete
    log_json: Path | None  # the file the events went to (None: stdout or nowhere)
    events: dict[str, int]  # how many events of each kind the run emitted (start, unit_done, ...)
    notices: list[dict[str, Any]]  # the events worth reading: warning, note, damaged, repaired, ...
    summary: dict[str, Any]  # the ``finished`` event's fields


@dataclass
class ExportResult:
    """The engine folder ``export`` wrote, what it is built for, and the verify readings (if asked)."""

    out: Path
    engine_id: str
    backend: str
    precision: str
    batch_size: int
    memory_size: int
    step: StepConfig
    recipe: Path | None
    seconds: float
    verify: list[dict[str, Any]] | None = None  # relative errors engine vs eager per input; None: not asked


@dataclass
class SampleResult:
    """The files ``sample`` wrote and the samples themselves (class-major: class k's rows k*n .. k*n+n-1)."""

    out: Path | None  # the grid (None with no_images)
    latents_out: Path | None
    images: int
    classes: list[int]  # the model's labels of the classes
    seconds: float
    latents: torch.Tensor = field(repr=False)  # final latents (N, C, H, W)
    samples: torch.Tensor | None = field(repr=False)  # decoded images in [-1, 1] (N, 3, H, W); None: no_images


@dataclass
class EvaluateResult:
    """``evaluate``'s results (None when only some seeds ran: they wait in ``partial``)."""

    out: Path
    complete: bool
    results: dict[str, Any] | None
    partial: Path
    seconds: float


@dataclass
class QualityResult:
    """``quality``'s judge readings (``results``), as the table the command prints."""

    results: dict[str, Any]
    table: str
    json_out: Path | None
    seconds: float


# ----------------------------------------------------------------------------------------------------
# Process settings, options, recipes


def wait_passively() -> bool:
    """OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, as the command line sets it) unless
    the user chose a policy. Returns whether it came in time: False when torch was loaded before, as
    OpenMP keeps the policy it read then (start Python with ``OMP_WAIT_POLICY=PASSIVE`` set instead)."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True


wait_passively()  # on the API's first use too: a caller may import torch between this and the call


def set_threads(threads: int | None) -> None:
    """``threads`` CPU threads for torch (and the onnxruntime sessions a job opens); None: leave torch's
    default (all cores, or ``OMP_NUM_THREADS``). Takes effect at any time."""
    if threads is None:
        return
    _check_value("threads", threads, (int,), "the options")
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def find_recipe(recipe: str | Path) -> Path:
    """An export recipe by path, or by the name of a packaged one (``dit-xl2-256-trt-fp16``, with or
    without ``.toml``), from any working directory."""
    path = Path(recipe)
    if path.exists():
        return path
    name = str(recipe)
    if "/" not in name and os.sep not in name:
        packaged = RECIPES / (name if name.endswith(".toml") else f"{name}.toml")
        if packaged.is_file():
            return packaged
    names = ", ".join(p.stem for p in sorted(RECIPES.glob("*.toml")))
    raise UserError(f"recipe '{recipe}' is neither a file nor a packaged recipe (packaged: {names})")


def recipes() -> dict[str, Path]:
    """The packaged export recipes by name."""
    return {p.stem: p for p in sorted(RECIPES.glob("*.toml"))}


def _check_value(name: str, value: Any, kinds: tuple[type, ...], where: str) -> Any:
    """``value`` if it is of one of ``kinds`` (an integer for a number, never a bool for a count), else
    a one-line UserError naming the option and where it was given."""
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if isinstance(value, list | tuple) and ok:
        ok = all(isinstance(v, str | int) and not isinstance(v, bool) for v in value)
    if not ok:
        named = [k for k in kinds if not (k is int and float in kinds)]  # "a number" covers integers
        want = " or ".join(dict.fromkeys(_TYPE_NAMES.get(k, "a path") for k in named))
        raise UserError(f"{name} in {where} must be {want}, got {value!r}")
    return value


def _step_kinds(name: str) -> tuple[type, ...]:
    """The Python types a step field accepts (as config.step_config parses them)."""
    from .config import StepConfig

    if name in ("steps", "cfg_channels"):  # "50", 50, "ddim10"; 3 or "all"
        return (str, int)
    default = getattr(StepConfig(), name)
    return {float: (int, float), int: (int,), bool: (bool,), str: (str,)}[type(default)]


def _checked_step(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    from .config import RETIRED_STEP_FIELDS

    return {
        k: v if k in RETIRED_STEP_FIELDS or v is None else _check_value(k, v, _step_kinds(k), where)
        for k, v in values.items()
    }


def _call_step(
    function: str, step: StepConfig | Mapping[str, Any] | None, step_options: Mapping[str, Any]
) -> dict[str, Any]:
    """The step a call gives: ``step`` (a StepConfig: every field; a mapping: the fields it names), then
    the step fields given as keyword arguments (None: not given). An unknown keyword is a TypeError,
    as for any Python function."""
    from .config import STEP_FIELDS, StepConfig
    from .jobs.job import step_layer

    unknown = sorted(set(step_options) - set(STEP_FIELDS))
    if unknown:
        raise TypeError(
            f"{function}() got an unexpected keyword argument '{unknown[0]}' (step fields: {', '.join(STEP_FIELDS)})"
        )
    if step is not None and not isinstance(step, StepConfig | Mapping):
        raise UserError(f"step in {function}() must be a StepConfig or a mapping of its fields, got {step!r}")
    if isinstance(step, Mapping) and (unknown := sorted(set(step) - set(STEP_FIELDS))):
        raise UserError(f"step in {function}() has no field '{unknown[0]}' (its fields: {', '.join(STEP_FIELDS)})")
    layer = step_layer(step) if isinstance(step, StepConfig) else dict(step or {})
    layer.update({k: v for k, v in step_options.items() if v is not None})
    return _checked_step({k: v for k, v in layer.items() if v is not None}, f"{function}()")


def _job_file(path: str | Path | None, kinds: Mapping[str, tuple[type, ...]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job file's options and step fields, checked."""
    from .config import RETIRED_STEP_FIELDS, STEP_FIELDS, read_toml_options

    if path is None:
        return {}, {}
    where = f"the job file '{path}'"
    values = read_toml_options(
        Path(path), [*kinds, *STEP_FIELDS], "job file", accepted=RETIRED_STEP_FIELDS, aliases=ALIASES
    )
    options = {k: _check_value(k, v, kinds[k], where) for k, v in values.items() if k in kinds}
    return options, _checked_step({k: v for k, v in values.items() if k not in kinds}, where)


def _classes_text(classes: Any) -> Any:
    """A list of classes (WNIDs, names or labels) as the command line's comma-separated text."""
    return ",".join(str(c) for c in classes) if isinstance(classes, list | tuple) else classes


class _Recorder:
    """Events to a file, stdout or nowhere (``jobs.events.Events``), counted by kind for the result."""

    NOTABLE = ("warning", "note", "damaged", "repaired", "rebuilt", "waiting")

    def __init__(self, events: Any):
        self.inner = events
        self.counts: Counter[str] = Counter()
        self.notices: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the image writer's threads emit too

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        rec = self.inner.emit(event, **fields)
        with self._lock:
            self.counts[event] += 1
            if event in self.NOTABLE:
                self.notices.append(rec)
        return rec

    def close(self) -> None:
        self.inner.close()


# ----------------------------------------------------------------------------------------------------
# The commands


def distill(
    out: str | Path | None = None,
    *,
    config: str | Path | None = None,
    subset: str | None = None,
    classes: str | list[str] | None = None,
    classes_file: str | Path | None = None,
    ipc: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    engines: str | Path | None = None,
    backend: str | None = None,
    engine_cache: str | Path | None = None,
    denoiser: str | Path | None = None,
    vae: str | Path | None = None,
    critics: str | Path | None = None,
    image_format: str | None = None,
    resolution: int | None = None,
    shard: str | None = None,
    ray: str | None = None,
    overwrite: bool | None = None,
    wait: bool | None = None,
    device: str | None = None,
    dtype: str | None = None,
    log_json: str | Path | None = None,
    progress: bool | None = None,
    threads: int | None = None,
    step: StepConfig | Mapping[str, Any] | None = None,
    print_events: bool = False,
    **step_options: Any,
) -> DistillResult:
    """Distill a class subset into ``ipc`` synthetic images per class: ``igds-fast distill``.

    Every argument is the command's option of the same name (``image_format`` is ``--format``), and
    None means "not given": the job file's value (``config``), else the command's default (out
    ``distilled``, subset imagenette, ipc 10, seed 0, backend auto, device cpu, png, ...). ``classes``
    may be a list. The step: ``step=StepConfig(...)`` or a mapping of its fields, and/or its fields as
    keywords (``steps=10``, ``guidance_scale=0.4``), over the shipped step ``StepConfig()``, or over the
    engine's step with ``engines``. Events (JSON lines) go to ``log_json`` if given, else to stdout with
    ``print_events``, else nowhere; the result counts them either way. A rerun resumes (or finds
    nothing to do); bad input raises UserError before anything is written.
    """
    started = time.perf_counter()
    wait_passively()  # before anything below loads torch
    called = {
        "out": out,
        "subset": subset,
        "classes": classes,
        "classes_file": classes_file,
        "ipc": ipc,
        "batch_size": batch_size,
        "seed": seed,
        "engines": engines,
        "backend": backend,
        "engine_cache": engine_cache,
        "denoiser": denoiser,
        "vae": vae,
        "critics": critics,
        "image_format": image_format,
        "resolution": resolution,
        "shard": shard,
        "ray": ray,
        "overwrite": overwrite,
        "wait": wait,
        "device": device,
        "dtype": dtype,
        "log_json": log_json,
        "progress": progress,
        "threads": threads,
    }
    given = {
        k: _check_value(k, v, DISTILL_OPTIONS[k], "igds_fast.distill()") for k, v in called.items() if v is not None
    }
    file_options, file_step = _job_file(config, DISTILL_OPTIONS)
    options = file_options | given
    step_given = file_step | _call_step("igds_fast.distill", step, step_options)
    set_threads(options.get("threads"))

    from .jobs.events import Events, check_log_path
    from .jobs.image_manifest import METADATA_FILE
    from .jobs.job import distill_job
    from .jobs.run import run_job

    target = Path(options.pop("out", DEFAULT_OUT))
    for name in ("classes_file", "engines", "engine_cache", "denoiser", "critics", "log_json"):
        if name in options:
            options[name] = Path(options[name])
    if "vae" in options:
        options["vae"] = str(options["vae"])
    if "classes" in options:
        options["classes"] = _classes_text(options["classes"])
    check_log_path(options.get("log_json"))  # before any event is written there
    quiet = options.get("log_json") is None and not print_events
    events = _Recorder(Events(path=options.get("log_json"), quiet=quiet, out=target))
    try:
        job = distill_job(target, step=step_given, **options)
        summary = run_job(job, events)  # type: ignore[arg-type] (an Events by its methods)
        events.emit("finished", **summary)
    except UserError as e:
        events.emit("error", message=str(e), exit_code=2)
        raise
    except Exception as e:
        events.emit("error", message=f"{type(e).__name__}: {e}", exit_code=1)
        raise
    finally:
        events.close()
    complete = bool(summary.get("complete"))
    covered = job.classes if complete or job.ray is not None else job.classes[job.shard[0] :: job.shard[1]]
    metadata, run_json = target / METADATA_FILE, target / "run.json"
    return DistillResult(
        out=target,
        images=len(covered) * job.ipc,
        images_made=int(summary.get("images_made", 0)),
        classes=[c.wnid for c in job.classes],
        ipc=job.ipc,
        complete=complete,
        nothing_to_do=bool(summary.get("nothing_to_do", False)),
        backend=str(summary.get("backend")),
        precision=str(summary.get("precision")),
        step=job.step,
        seconds=time.perf_counter() - started,
        sampling_seconds=float(summary.get("seconds", 0.0)),
        img_per_s=summary.get("img_per_s"),
        repaired=list(summary.get("repaired", [])),
        metadata=metadata if complete and metadata.is_file() else None,
        run_json=run_json if complete and run_json.is_file() else None,
        log_json=options.get("log_json"),
        events=dict(events.counts),
        notices=list(events.notices),
        summary=dict(summary),
    )


def export(
    out: str | Path,
    *,
    recipe: str | Path | None = None,
    config: str | Path | None = None,
    denoiser: str | Path | None = None,
    vae: str | Path | None = None,
    critics: str | Path | None = None,
    batch_size: int | None = None,
    memory_size: int | None = None,
    ipc: int | None = None,
    precision: str | None = None,
    backend: str | None = None,
    split: bool | None = None,
    device: str | None = None,
    opset: int | None = None,
    verify: bool = False,
    overwrite: bool = False,
    threads: int | None = None,
    step: StepConfig | Mapping[str, Any] | None = None,
    **step_options: Any,
) -> ExportResult:
    """Export the fused guided step (and the VAE decoder) as an engine folder: ``igds-fast export``.

    ``recipe`` (or its alias ``config``): a TOML recipe by path, or a packaged one by name (see
    ``recipes()``); the arguments given (None: not given) override its keys, which override the
    defaults (onnxruntime, fp32, batch 16, memory 64, the shipped step). ``verify``: also compare the
    engine with the eager step on random inputs (``ExportResult.verify``)."""
    started = time.perf_counter()
    wait_passively()
    if recipe is not None and config is not None:
        raise UserError("give recipe or config, not both (config is another name for the recipe)")
    called = {
        "denoiser": denoiser,
        "vae": vae,
        "critics": critics,
        "batch_size": batch_size,
        "memory_size": memory_size,
        "ipc": ipc,
        "precision": precision,
        "backend": backend,
        "split": split,
        "device": device,
        "opset": opset,
    }
    given = {k: _check_value(k, v, EXPORT_OPTIONS[k], "igds_fast.export()") for k, v in called.items() if v is not None}
    step_given = _call_step("igds_fast.export", step, step_options)
    set_threads(threads)

    from .backends.build import EXPORT_DEFAULTS, export_engine, export_spec, verify_export
    from .backends.engine_manifest import read_engine_manifest
    from .config import RETIRED_STEP_FIELDS, STEP_FIELDS, read_toml_options

    chosen = recipe if recipe is not None else config
    path = find_recipe(chosen) if chosen is not None else None
    layer: dict[str, Any] = {}
    if path is not None:
        values = read_toml_options(path, [*EXPORT_DEFAULTS, *STEP_FIELDS], "recipe", accepted=RETIRED_STEP_FIELDS)
        where = f"the recipe '{path}'"
        layer = {k: _check_value(k, v, EXPORT_OPTIONS[k], where) for k, v in values.items() if k in EXPORT_OPTIONS}
        layer |= _checked_step({k: v for k, v in values.items() if k not in EXPORT_OPTIONS}, where)
    settings = layer | given | step_given
    for name in ("denoiser", "critics"):
        if settings.get(name) is not None:
            settings[name] = Path(settings[name])
    if settings.get("vae") is not None:
        settings["vae"] = str(settings["vae"])
    spec = export_spec(None, settings, Path(out), overwrite)
    export_engine(spec)
    manifest = read_engine_manifest(spec.out)
    readings = verify_export(spec) if verify else None
    return ExportResult(
        out=spec.out,
        engine_id=str(manifest["id"]),
        backend=spec.backend,
        precision=spec.precision,
        batch_size=spec.batch_size,
        memory_size=spec.memory_size,
        step=spec.cfg,
        recipe=path,
        seconds=time.perf_counter() - started,
        verify=readings,
    )


def sample(
    classes: str | list[str | int],
    *,
    out: str | Path = "grid.png",
    denoiser: str | Path | None = None,
    vae: str | Path | None = None,
    critics: str | Path | None = None,
    n_per_class: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    init_noise: str | Path | np.ndarray | None = None,
    latents_out: str | Path | None = None,
    no_images: bool = False,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int | None = None,
    progress: bool | None = None,
    step: StepConfig | Mapping[str, Any] | None = None,
    **step_options: Any,
) -> SampleResult:
    """Sample ``n_per_class`` images of each class with the eager step: ``igds-fast sample``.

    ``classes``: the model's labels (``"207,3"`` or ``[207, 3]``) or WNIDs. Writes the grid (one row
    per class) to ``out`` unless ``no_images``, and the final latents to ``latents_out`` (.npy) if
    given; the result also holds them as tensors. ``init_noise``: x_T as a .npy file or an array of
    shape (N, C, H, W). The step is unguided unless ``guidance="igds"`` (as the command)."""
    started = time.perf_counter()
    wait_passively()
    step_given = {"guidance": "off"} | _call_step("igds_fast.sample", step, step_options)
    set_threads(threads)

    from .config import step_config
    from .jobs.events import show_progress
    from .jobs.sample import run_sample

    run = run_sample(
        _classes_text(classes),
        step_config(step_given),
        out=Path(out),
        denoiser=denoiser,
        vae=None if vae is None else str(vae),
        critics=critics,
        n_per_class=n_per_class,
        seed=seed,
        batch_size=batch_size,
        init_noise=init_noise,
        latents_out=None if latents_out is None else Path(latents_out),
        no_images=no_images,
        device=device,
        dtype=dtype,
        progress=show_progress(progress),
    )
    return SampleResult(
        out=run.out,
        latents_out=run.latents_out,
        images=int(run.latents.shape[0]),
        classes=run.labels,
        seconds=time.perf_counter() - started,
        latents=run.latents,
        samples=run.images,
    )


def evaluate(
    train: str | Path,
    val: str | Path,
    *,
    subset: str | None = None,
    net: str = "convnet6",
    resolution: int = 224,
    seeds: int = 3,
    epochs: int | None = None,
    method: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    out: str | Path = "results.json",
    only_seed: list[int] | None = None,
) -> EvaluateResult:
    """Train ``seeds`` networks on a distilled set and test them on the real val set: ``igds-fast
    evaluate`` (MinimaxDiffusion's protocol). ``results`` holds the final epoch's top-1 mean and std
    and the best of 10 val readings; with ``only_seed`` the seeds run wait in ``<out>.partial`` until
    every seed is in (``complete`` False)."""
    started = time.perf_counter()
    wait_passively()
    out = Path(out)

    from .evaluation.train import evaluate_set, partial_path, seed_list, write_results
    from .subsets import subset as subset_classes

    if not out.parent.is_dir():
        raise UserError(f"output folder '{out.parent}' does not exist")
    if out.is_dir():
        raise UserError(f"--out '{out}' is a folder; give a file name, e.g. results.json")
    order = [c.wnid for c in subset_classes(subset)] if subset is not None else None
    results = evaluate_set(
        Path(train),
        Path(val),
        net,
        resolution,
        seed_list(seeds),
        epochs,
        order,
        method,
        device,
        precision=precision,
        out=out,
        only=list(only_seed) if only_seed else None,
    )
    if results is not None:
        write_results(out, results)
    return EvaluateResult(out, results is not None, results, partial_path(out), time.perf_counter() - started)


def quality(
    samples: str | Path,
    real_train: str | Path,
    real_val: str | Path,
    *,
    resolution: int | None = None,
    json_out: str | Path | None = None,
    net: str = "convnet3",
    epochs: int | None = None,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> QualityResult:
    """Judge a sample set with an independent classifier trained on real data: ``igds-fast quality``
    (accuracy, precision, recall, density, coverage, saturation, within-class distance, next to real
    val and random real images). ``json_out``: also write the full results there."""
    started = time.perf_counter()
    json_path = None if json_out is None else Path(json_out)
    if json_path is not None and not json_path.parent.is_dir():
        raise UserError(f"output folder '{json_path.parent}' does not exist")
    if json_path is not None and json_path.is_dir():
        raise UserError(f"--json '{json_path}' is a folder; give a file name, e.g. quality.json")
    wait_passively()

    import json

    from .evaluation.scoring import format_table, judge_samples
    from .imageio import write_atomic

    result = judge_samples(
        Path(samples), Path(real_train), Path(real_val), resolution, net, epochs, seed, cache_dir, device
    )
    if json_path is not None:
        write_atomic(json_path, (json.dumps(result, indent=2) + "\n").encode())
    return QualityResult(result, format_table(result), json_path, time.perf_counter() - started)

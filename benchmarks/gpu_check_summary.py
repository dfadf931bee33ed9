"""The summary of ``benchmarks/gpu_check.sh``: one table from the bench JSON files it wrote (each
file's step label first: how many steps were guided, the clip guard), the GPU goals checked against
them, and the Stage 0 fail-fast check. Standard library only (it runs on a GPU machine where nothing
is installed, and after a stage was killed). "GiB" is a row's peak (reset at its start), "held" what
was already allocated when it started.

    python3 benchmarks/gpu_check_summary.py OUT [--dry-run=0|1] [--failed REASON]
    python3 benchmarks/gpu_check_summary.py OUT --check-stage0   # exit 1 and the reason when Stage 0 failed
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# The JSON files of the stages, in order (stage1-b*.json: one per batch size).
PATTERNS = ("stage0.json", "stage1-b*.json", "stage2-aoti.json")
GOALS = {"img_s": 20.0, "x_eager_ref": 10.0, "igds_overhead": 0.15}  # the GPU targets: DiT-XL/2 256 px on one H100


def tolerance(precision: str | None) -> float:
    """The parity bound of ``igds-fast export --verify``: fp32 1e-3, reduced precision 5e-2."""
    return 1e-3 if precision == "fp32" else 5e-2


def read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def bench_files(out: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in PATTERNS:
        found += sorted(out.glob(pattern), key=lambda p: (len(p.name), p.name))
    return found


def worst_error(row: dict[str, Any]) -> float | None:
    errs = row.get("max_rel_error_vs_eager_fp32")
    return max(errs.values()) if errs else None


def parity_verdict(name: str, row: dict[str, Any]) -> str:
    err = worst_error(row)
    if err is None:
        return ""
    if name.startswith("eager-ref"):
        return "n/a"  # batch 1: no within-batch diversity pairs, so it is not the batched step
    return "ok" if err <= tolerance(row.get("precision")) else "FAIL"


def reference_rate(out: Path) -> float | None:
    """eager-ref's end-to-end img/s in Stage 1 (one image at a time: its rate does not depend on the
    batch, so every Stage 1/2 row of this run is compared with it)."""
    for path in sorted(out.glob("stage1-b*.json")):
        ref = ((read(path) or {}).get("results") or {}).get("eager-ref") or {}
        if ref.get("status") == "ok" and (ref.get("e2e") or {}).get("img_s"):
            return float(ref["e2e"]["img_s"])
    return None


def table_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    run_ref = reference_rate(out)
    for path in bench_files(out):
        d = read(path)
        if d is None:
            rows.append({"file": path.name, "row": "-", "status": "unreadable JSON"})
            continue
        cfg = d.get("config", {})
        results = d.get("results", {})
        ref = results.get("eager-ref", {})
        ref_img_s = ref.get("e2e", {}).get("img_s") if ref.get("status") == "ok" else None
        if ref_img_s is None and path.name != "stage0.json":
            ref_img_s = run_ref
        for name, r in results.items():
            e2e = r.get("e2e") or {}
            rows.append(
                {
                    "file": path.name,
                    "model": cfg.get("model"),
                    "resolution": cfg.get("resolution"),
                    "batch": cfg.get("batch_size"),
                    "row": name,
                    "precision": r.get("precision"),
                    "status": r.get("status"),
                    "why": r.get("reason") or r.get("error"),
                    "build_s": r.get("build_s"),
                    "step_ms": r.get("step_ms"),
                    "img_s": e2e.get("img_s"),
                    "e2e_images": e2e.get("images"),
                    "x_eager_ref": e2e.get("img_s") / ref_img_s if e2e.get("img_s") and ref_img_s else None,
                    "x_eager_step": r.get("step_speedup_vs_eager"),
                    "max_err": worst_error(r),
                    "parity": parity_verdict(name, r),
                    "peak_gib": r["peak_mem_bytes"] / 2**30 if r.get("peak_mem_bytes") else None,
                    "resident_gib": r["resident_mem_bytes"] / 2**30 if r.get("resident_mem_bytes") else None,
                    "step_label": d.get("step_label"),
                    "stages_ms": r.get("stages_ms"),
                    "machine": d.get("machine", {}).get("gpu") or d.get("machine", {}).get("cpu"),
                }
            )
    return rows


def goal(text: str, value: float, where: str, met: bool, note: str) -> dict[str, Any]:
    return {"goal": text, "value": value, "where": where, "met": met, "note": note}


def goals(rows: list[dict[str, Any]], dry: bool) -> list[dict[str, Any]]:
    """The GPU targets, from the Stage 1/2 rows of one script run (never from Stage 0)."""
    main = [r for r in rows if r["file"] != "stage0.json" and r.get("status") == "ok"]
    best = max((r for r in main if r.get("img_s")), key=lambda r: r["img_s"], default=None)
    refs = [r for r in main if r["row"] == "eager-ref" and r.get("img_s")]
    eager = next((r for r in main if r["row"] == "eager" and r.get("stages_ms")), None)
    note = " (dry run: tiny model on the CPU, not the target)" if dry else ""
    out = []
    if best is not None:
        where = f"{best['row']} b{best['batch']}"
        out.append(goal(f"best end-to-end img/s >= {GOALS['img_s']:g}", best["img_s"], where,
                        best["img_s"] >= GOALS["img_s"], note))  # fmt: skip
        if refs:
            x = best["img_s"] / refs[0]["img_s"]
            out.append(goal(f"best vs eager-ref (same run) >= {GOALS['x_eager_ref']:g}x", x, where + " / eager-ref",
                            x >= GOALS["x_eager_ref"], note))  # fmt: skip
    if eager is not None:
        st = eager["stages_ms"]
        unguided = st.get("denoiser_cfg", 0) + st.get("update", 0)
        if unguided > 0 and "critic_grad" in st:
            x = st["critic_grad"] / unguided
            where = f"eager b{eager['batch']}: critic_grad / (denoiser_cfg + update)"
            text = f"IGDS cost over the unguided step <= {GOALS['igds_overhead']:.0%}"
            split = " (eager stage split; fused graphs are not split)"
            out.append(goal(text, x, where, x <= GOALS["igds_overhead"], note + split))
    return out


def fmt(v: Any, spec: str) -> str:
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return format("-", f">{width}") if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'file':18} {'batch':>5} {'row':22} {'prec':5} {'status':9} {'build s':>8} {'ms/step':>9} {'img/s':>8} "
    head += f"{'x ref':>7} {'x eager':>7} {'max err':>8} {'parity':6} {'GiB':>6} {'held':>6}"
    print(head)
    print("-" * len(head))
    label = None
    for r in rows:
        if r.get("step_label") and (r["file"], r["step_label"]) != label:
            label = (r["file"], r["step_label"])
            print(f"{r['file']}: {r['step_label']}")
        line = (
            f"{r['file']:18} {fmt(r.get('batch'), '>5')} {r['row']:22} {r.get('precision') or '-':5} "
            f"{r['status'] or '-':9} {fmt(r.get('build_s'), '8.1f')} {fmt(r.get('step_ms'), '9.1f')} "
            f"{fmt(r.get('img_s'), '8.2f')} {fmt(r.get('x_eager_ref'), '7.1f')} {fmt(r.get('x_eager_step'), '7.2f')} "
            f"{fmt(r.get('max_err'), '8.1e')} {r.get('parity') or '':6} {fmt(r.get('peak_gib'), '6.1f')} "
            f"{fmt(r.get('resident_gib'), '6.1f')}"
        )
        print(line)
        if r["status"] not in ("ok", None) and r.get("why"):
            print(f"{'':18}       why: {r['why'][:200]}")


def distill_result(out: Path) -> dict[str, Any] | None:
    path = out / "stage0" / "distill.jsonl"
    try:
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    return next((e for e in reversed(events) if e.get("event") in ("finished", "error")), None)


def check_stage0(out: Path) -> str | None:
    """Why Stage 0 failed, or None: the distill finished complete, and the eager row is ok and within
    its parity bound. Other backends' failures are printed, not fatal (their rows say why)."""
    fin = distill_result(out)
    if fin is None or fin.get("event") != "finished" or not fin.get("complete"):
        return f"the distill did not finish: {fin}"
    d = read(out / "stage0.json")
    if d is None:
        return "the bench wrote no JSON (see stage0-bench.log)"
    eager = d.get("results", {}).get("eager")
    if eager is None or eager.get("status") != "ok":
        return f"the eager step did not run: {eager}"
    if parity_verdict("eager", eager) != "ok":
        return f"eager {eager.get('precision')} differs from eager fp32 by {worst_error(eager):.2e}"
    for name, r in d.get("results", {}).items():
        if r.get("status") != "ok" or parity_verdict(name, r) == "FAIL":
            why = r.get("reason") or r.get("error") or f"max error {worst_error(r)}"
            print(f"   stage 0: {name} {r.get('status')}: {why} (not fatal)", file=sys.stderr)
    return None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", default="0")
    ap.add_argument("--failed", default=None)
    ap.add_argument("--check-stage0", action="store_true")
    a = ap.parse_args(argv)
    if a.check_stage0:
        why = check_stage0(a.out)
        if why:
            print(why)
            return 1
        return 0
    dry = a.dry_run not in ("0", "", "false")
    rows = table_rows(a.out)
    print_table(rows)
    fin = distill_result(a.out)
    if fin is not None:
        print(f"\nstage 0 distill: {fin.get('event')}, {fin.get('images_made')} images, "
              f"{fmt(fin.get('img_per_s'), '.2f')} img/s ({fin.get('backend')}, {fin.get('precision')})")  # fmt: skip
    met = goals(rows, dry)
    if met:
        print("\ngoals (the GPU targets):")
    for g in met:
        verdict = "met" if g["met"] else "NOT met"
        print(f"  {g['goal']:45} {g['value']:8.2f}  {verdict:7}  {g['where']}{g['note']}")
    summary = {"dry_run": dry, "failed": a.failed, "rows": rows, "goals": met, "distill": fin}
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nwrote {a.out / 'summary.json'}" + (f"; FAILED: {a.failed}" if a.failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

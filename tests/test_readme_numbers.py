"""Every number in the README's speed, parity and results tables is in the JSON files the table cites.

Each such table follows a comment `<!-- numbers: PATH [PATH...] -->` (paths relative to the repository,
globs allowed). Every numeric token in the table's cells, the first column (the row's label) left out,
must equal a summary number of those files (not their per-row detail or raw samples) within the
rounding it is shown with: 42.5 matches 42.4999 or 42.53,
4.3e-6 matches 4.32e-6; a percentage also matches a fraction (42.5 matches 0.4254). The results table,
which `igds-fast report --readme` writes, is checked more strictly: each cell against the one result
file of its method and IPC (mean, std, best of the readings, seed count, precision).
"""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import pytest

from igds_fast.evaluation.report import METHOD_LABELS, README_BEGIN

REPO = Path(__file__).resolve().parents[1]
MARK = re.compile(r"<!-- numbers: (.+?) -->")
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")
TAGS = re.compile(r"\[[^\]]*\]|`[^`]*`")  # [1 seed, bf16] and code spans: labels, not measurements


def marked_tables(text: str) -> list[tuple[str, list[str], list[str], list[list[str]]]]:
    """(section heading, cited paths, header cells, body rows as cell lists) for every table after a numbers
    comment."""
    lines = text.splitlines()
    out = []
    for k, line in enumerate(lines):
        m = MARK.search(line)
        if not m:
            continue
        section = next((h for h in reversed(lines[:k]) if h.startswith("## ")), "")
        j = k + 1
        while j < len(lines) and not lines[j].startswith("|"):
            assert not lines[j].startswith("## "), f"no table after the numbers comment on line {k + 1}"
            j += 1
        rows = []
        while j < len(lines) and lines[j].startswith("|"):
            rows.append([c.strip() for c in lines[j].strip().strip("|").split("|")])
            j += 1
        assert len(rows) > 2, f"the table after line {k + 1} has no rows"
        out.append((section, m.group(1).split(), rows[0], rows[2:]))  # the separator dropped
    return out


def cited_files(paths: list[str], root: Path) -> list[Path]:
    files = []
    for p in paths:
        found = sorted(glob.glob(str(root / p)))
        assert found, f"the README cites {p}, which matches no file"
        files += [Path(f) for f in found]
    return files


DETAIL = ("rows", "runs")  # per-case and per-run detail under a file's summary: not what a table quotes


def json_numbers(obj) -> list[float]:
    """A file's summary numbers: every number except the per-row / per-run detail and raw sample lists (the
    repeats of a timing), so that a doctored table number cannot hide among thousands of samples."""
    if isinstance(obj, dict):
        return [v for k, x in obj.items() if k not in DETAIL for v in json_numbers(x)]
    if isinstance(obj, list):
        if obj and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj):
            return []
        return [v for x in obj for v in json_numbers(x)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []


def tolerance(token: str) -> float:
    """Half a unit of the last digit shown: '42.5' -> 0.05, '4.3e-6' -> 5e-8, '651' -> 0.5."""
    mantissa, _, exp = token.lower().lstrip("+-").partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (int(exp or 0) - decimals)


def shown_as(token: str, value: float) -> bool:
    x, tol = float(token), tolerance(token) * (1 + 1e-9)
    return abs(value - x) <= tol or abs(100 * value - x) <= tol


def cell_numbers(cell: str) -> list[str]:
    return NUMBER.findall(TAGS.sub(" ", cell))


def unbacked(text: str, root: Path = REPO) -> list[str]:
    """Every table number of ``text`` (a README) that its cited files do not back, as readable lines."""
    problems = []
    for section, paths, header, rows in marked_tables(text):
        files = cited_files(paths, root)
        if section == "## Results":
            problems += unbacked_results(header, rows, files)
            continue
        values = [v for f in files for v in json_numbers(json.loads(f.read_text()))]
        for row in rows:
            for cell in row[1:]:
                problems += [f"{section}: {row[0]}: {tok}" for tok in cell_numbers(cell) if not any(
                    shown_as(tok, v) for v in values)]  # fmt: skip
    return problems


def unbacked_results(header: list[str], rows: list[list[str]], files: list[Path]) -> list[str]:
    """The results table's cells against the result file of each cell's method and IPC."""
    results = [json.loads(f.read_text()) for f in files]
    label_to_method = {v: k for k, v in METHOD_LABELS.items()}
    problems = []
    ipcs = [int(h.split()[1]) for h in header[1:]]  # "IPC 10"
    for row in rows:
        method = label_to_method.get(row[0], row[0])
        for ipc, cell in zip(ipcs, row[1:], strict=True):
            if cell == "—":
                continue
            match = [r for r in results if r["method"] == method and r["ipc"] == ipc]
            if len(match) != 1:
                problems.append(f"results: {row[0]} IPC {ipc}: {len(match)} cited files hold it")
                continue
            r = match[0]
            n = len(r["accuracies"])
            mean, _, rest = TAGS.sub(" ", cell).partition("±")
            shown = [(mean.split("(")[0].strip(), r["mean"])]
            if rest:
                shown.append((rest.split("(")[0].strip(" *"), r["std"]))
            if "(" in cell:
                shown.append((cell.split("(")[1].split(")")[0], r.get("best_mean", float("nan"))))
            for tok, value in shown:
                if not re.fullmatch(NUMBER, tok) or not shown_as(tok, value):
                    problems.append(f"results: {row[0]} IPC {ipc}: {tok!r} is not {100 * value:.4g}")
            tags = re.findall(r"\[([^\]]*)\]", cell)
            words = [w.strip() for t in tags for w in t.split(",")]
            seeds = [w for w in words if "seed" in w]
            if (seeds and seeds != [f"{n} seed{'s' if n != 1 else ''}"]) or (not seeds and n != 3):
                problems.append(f"results: {row[0]} IPC {ipc}: seed count {seeds} but the file has {n}")
            precisions = [w for w in words if w in ("fp32", "bf16", "fp16")]
            if precisions and precisions != [r.get("precision", "fp32")]:
                problems.append(f"results: {row[0]} IPC {ipc}: {precisions} but the file says {r.get('precision')}")
    return problems


def test_the_readme_cites_json_for_its_speed_parity_and_results_tables():
    text = (REPO / "README.md").read_text()
    tables = marked_tables(text)
    sections = {s for s, _, _, _ in tables}
    assert {"## Speed", "## Parity", "## Results"} <= sections, sections
    for _, paths, _, _ in tables:
        assert all(p.startswith("benchmarks/results/") and p.endswith(".json") for p in paths), paths
    results = [(h, rows) for s, _, h, rows in tables if s == "## Results"]
    assert len(results) == 1 and results[0][0] == ["method", "IPC 1", "IPC 10", "IPC 50"], results
    # the results table is the generated block, right after its numbers comment
    assert MARK.search(text[: text.index(README_BEGIN)].splitlines()[-1])


def test_every_table_number_is_in_the_json_it_cites():
    text = (REPO / "README.md").read_text()
    assert unbacked(text) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("| 25.86 |", "| 15.86 |"),  # the main job's seconds
        ("<= 4.3e-6", "<= 3.3e-6"),  # a parity bound
        ("6.2e-7 to", "5.2e-7 to"),  # the DiTPipeline range
        ("44.1 ± 0.2", "45.1 ± 0.2"),  # a results mean
        ("25.1 ± 0.2", "25.1 ± 0.9"),  # a results std
        ("(44.4)", "(45.4)"),  # a best-of-readings mean
        ("48.8 (48.8) [1 seed]", "48.8 (48.8)"),  # a seed count dropped
        ("| 20.1 ± 0.7 (20.5) |", "| 20.1 ± 0.7 (20.5) [fp32] |"),  # the wrong precision
    ],
)
def test_an_edited_number_fails(old: str, new: str):
    text = (REPO / "README.md").read_text()
    assert text.count(old) == 1, f"the doctored case {old!r} no longer occurs once in the README"
    assert unbacked(text.replace(old, new)), f"editing {old!r} to {new!r} went unnoticed"


def test_every_number_scaled_by_a_half_fails():
    """Doctor each table number of the README in turn (x 3/2, shown with the same digits): each must be caught."""
    text = (REPO / "README.md").read_text()
    lines = text.splitlines(keepends=True)
    missed, doctored_count = [], 0
    for _, _, _, rows in marked_tables(text):
        for row in rows:
            (k,) = [i for i, raw in enumerate(lines) if raw.startswith("|") and raw.strip().strip("|").split("|")
                    and [c.strip() for c in raw.strip().strip("|").split("|")] == row]  # fmt: skip
            parts = lines[k].split("|")  # ['', ' label ', ' cell ', ..., '\n']
            for col, cell in enumerate(row[1:], start=2):
                for tok in cell_numbers(cell):
                    mantissa, _, exp = tok.lower().partition("e")
                    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
                    doctored = f"{float(mantissa) * 3 / 2:.{decimals}f}" + (f"e{exp}" if exp else "")
                    new_parts = parts.copy()
                    new_parts[col] = re.sub(rf"(?<![\w.]){re.escape(tok)}(?![\w.])", doctored, parts[col], count=1)
                    assert new_parts[col] != parts[col], (row, tok)
                    doctored_count += 1
                    if not unbacked("".join(lines[:k] + ["|".join(new_parts)] + lines[k + 1 :])):
                        missed.append(f"{row[0]}: {tok} -> {doctored}")
    assert doctored_count > 30 and missed == []

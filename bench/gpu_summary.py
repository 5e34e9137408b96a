"""One table of every number bench/gpu_check.sh measured (issue 14), from the JSON files it wrote.

    python bench/gpu_summary.py bench/results          # prints the table, writes bench/results/summary.txt

Reads env.json, step.json (bench_step.py), autotune.json (bench_step.py, max-autotune), recipe.json
(bench_step.py --recipe), trainer.json and levers.json (bench_trainer.py), learn.json (bench_learn.py --compare) and parts.json
(what ran, how long, exit codes); a part that did not run shows as such. Targets are issue 14's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN_GOAL, EVAL_GOAL, MFU_GOAL, TRAINER_SHARE = 1.5, 1.5, 45.0, 0.9


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _f(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "NOT met")


def trainer_rows(part: str, trainer: dict | None) -> list[tuple[str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str]] = []
    if trainer is None:
        return rows
    d = trainer.get("dataset", {})
    rows.append((part, "dataset: puzzle identifiers (table)",
                 f"{d.get('num_puzzle_identifiers', '-')} ({_f(d.get('table_gib_float32'), '.2f', ' GiB')}); build "
                 f"{_f(trainer.get('build_s'), '.0f', ' s')}", "~1.28 M", ""))
    bench = trainer.get("bench_step") or {}
    for r in trainer.get("runs", []):
        if r.get("error"):
            rows.append((part, f"{r['name']} run", f"failed: {r['error'].splitlines()[0][:60]}", "", ""))
            continue
        share = r.get("vs_bench_step")
        rows.append((part, f"{r['name']}: trm train examples/s ({trainer['batch']} rows/step)",
                     f"{r['examples_per_s']:.1f} ex/s ({r['seconds_per_step']:.4f} s/step) vs bench "
                     f"{_f(bench.get('examples_per_s'), '.1f')}: {_f(share, '.2f', 'x')}", "within 10%",
                     _verdict(None if share is None else share >= TRAINER_SHARE)))
        if "data_wait_median_s" in r:
            rows.append((part, f"{r['name']}: data wait per step (median / p90 / share of time)",
                         f"{1000 * r['data_wait_median_s']:.2f} / {1000 * r['data_wait_p90_s']:.2f} ms / "
                         f"{100 * r['data_wait_share']:.2f}%", "no stall", ""))
        if r.get("peak_gpu_gib_nvidia_smi") is not None:
            rows.append((part, f"{r['name']}: GPU memory (nvidia-smi)", f"{r['peak_gpu_gib_nvidia_smi']:.1f} GiB", "", ""))
    return rows


def rows_of(folder: Path) -> tuple[str, list[tuple[str, str, str, str, str]]]:
    env = _load(folder, "env") or {}
    title = (f"issue 14 GPU check: {env.get('device', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
             f"driver {env.get('driver', '?')}, {env.get('date', '?')}")
    rows: list[tuple[str, str, str, str, str]] = []
    for part in ("step", "autotune"):
        data = _load(folder, part)
        if data is None:
            continue
        for h in data.get("headline", []):
            goal = TRAIN_GOAL if h["mode"] == "train" else EVAL_GOAL
            ratio = h.get("vs_reference_compiled")
            rows.append((part, f"{h['model']} {h['mode']}: ours best ({h['best']}) vs reference compiled",
                         f"{_f(h['seconds'], '.4f')} s vs {_f(h.get('reference_compiled_seconds'), '.4f')} s = {_f(ratio, '.2f', 'x')}",
                         f">= {goal}x", _verdict(None if ratio is None else ratio >= goal)))
            if h.get("vs_reference_eager"):
                rows.append((part, f"{h['model']} {h['mode']}: ours best vs reference eager",
                             f"{_f(h.get('reference_eager_seconds'), '.4f')} s ref = {_f(h['vs_reference_eager'], '.2f', 'x')}", "", ""))
            if h["mode"] == "train" and h.get("mfu") is not None:
                rows.append((part, f"{h['model']} train MFU of ours best", _f(h["mfu"], ".1f", "%"), f">= {MFU_GOAL:.0f}%",
                             _verdict(h["mfu"] >= MFU_GOAL)))
        for r in data.get("rows", []):
            if r.get("error"):
                rows.append((part, f"{r['model']} {r['mode']} {r['setting']}", f"failed: {r['error'][:60]}", "", ""))
                continue
            rows.append((part, f"{r['model']} {r['mode']} {r['setting']}",
                         f"{r['seconds']:.4f} s/step, {_f(r.get('mfu'), '.1f', '% MFU')}, peak {_f(r.get('peak_gib'), '.2f', ' GiB')}, "
                         f"first {_f(r.get('first_s'), '.0f', ' s')}", "", ""))
    recipe = _load(folder, "recipe")
    for r in (recipe or {}).get("recipe", []):
        if r.get("error"):
            rows.append(("recipe", r["setting"], f"failed: {r['error'][:60]}", "", ""))
            continue
        rows.append(("recipe", f"{r['setting']} (one optimiser step)",
                     f"{r['seconds']:.3f} s, peak {_f(r.get('peak_gib'), '.1f', ' GiB')}, {_f(r.get('mfu'), '.1f', '% MFU')}",
                     "", ""))
        if r.get("run_hours") is not None:
            where = "one GPU" if "cuda" in str((recipe or {}).get("env", {}).get("device", "")).lower() or \
                (recipe or {}).get("env", {}).get("gpu_memory_gib") else "this device"
            rows.append(("recipe", f"  the seed run ({r['run_steps']} steps) on {where}", f"{r['run_hours']:.1f} h "
                         f"({r['run_hours'] / 24:.1f} days, model step only)", "", ""))
    for part in ("trainer", "levers"):
        rows += trainer_rows(part, _load(folder, part))
    learn = _load(folder, "learn")
    if learn is not None:
        runs = learn.get("runs", {})
        text = ", ".join(f"{k} {_f(v.get('final_exact'), '.3f')} ({_f(v.get('seconds_per_step'), '.4f')} s/step)"
                         for k, v in runs.items())
        rows.append(("learn", f"cpu-tiny, {learn.get('steps')} steps: final train exact accuracy", text, "same level",
                     _verdict(learn.get("same_within_noise"))))
        rows.append(("learn", "difference / 2 standard errors",
                     f"{_f(learn.get('difference'), '+.3f')} / {_f(learn.get('two_standard_errors'), '.3f')}", "", ""))
    for part in (_load(folder, "parts") or {}).get("parts", []):
        rows.append(("parts", part["name"], f"{part['status']} ({part['seconds']:.0f} s)", "", ""))
    return title, rows


def render(title: str, rows: list[tuple[str, str, str, str, str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("part", "measure", "value", "target", "verdict"))]
    widths[1] = min(widths[1], 70)
    line = lambda cells: " | ".join(c[: widths[i]].ljust(widths[i]) for i, c in enumerate(cells)).rstrip()  # noqa: E731
    out = [title, line(("part", "measure", "value", "target", "verdict")), "-" * (sum(widths) + 3 * 4)]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    folder = Path(argv[0] if argv else "bench/results")
    title, rows = rows_of(folder)
    text = render(title, rows)
    print(text, end="")
    (folder / "summary.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""bench/ code of the GPU check (issue 14) on CPU: bench_step's settings and JSON, the summary's verdicts.

    .venv/bin/python -m pytest -q tests/test_gpu_bench.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_step  # noqa: E402
import gpu_summary  # noqa: E402


def test_settings_parse_and_bad_ones_are_refused():
    specs = bench_step.parse_specs("eager, compile,compile:reduce-overhead+sdpa=cudnn,eager+threads=1", "ours")
    assert [s.label for s in specs] == ["ours eager", "ours compile", "ours compile:reduce-overhead+sdpa=cudnn",
                                        "ours eager t1"]
    assert specs[2].compile == "reduce-overhead" and specs[2].sdpa == "cudnn"
    for bad, side in [("compile:fastest", "ours"), ("jit", "ours"), ("eager+sdpa=flash3", "ours"),
                      ("eager+threads=0", "ours"), ("compile+sdpa=flash", "reference")]:
        with pytest.raises(ValueError):
            bench_step.parse_specs(bad, side)


def test_step_bench_writes_the_table_as_json(tmp_path, capsys):
    out = tmp_path / "step.json"
    code = bench_step.main(["--models", "tiny", "--batch", "1", "--repeats", "1", "--modes", "eval",
                            "--ours", "eager,eager+sdpa=math", "--json", str(out), "--no-tune-malloc"])
    assert code == 0
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    assert [r["setting"] for r in rows] == ["ours eager", "ours eager+sdpa=math"]
    assert all(r["seconds"] > 0 and r["peak_gib"] is None and r["error"] is None for r in rows)  # CPU: no peak
    assert payload["headline"][0]["best"] in {"ours eager", "ours eager+sdpa=math"}
    assert "ours eager+sdpa=math" in capsys.readouterr().out


def _write(folder: Path, name: str, payload: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(payload))


@pytest.mark.parametrize("ratio, mfu, share, verdicts", [
    (1.6, 46.0, 0.95, ["met", "met", "met"]),
    (1.2, 30.0, 0.80, ["NOT met", "NOT met", "NOT met"]),
])
def test_summary_verdicts_follow_the_targets(tmp_path, ratio, mfu, share, verdicts):
    _write(tmp_path, "env", {"device": "GPU X", "torch": "2", "cuda": "13", "date": "d"})
    _write(tmp_path, "step", {"headline": [{"model": "seed", "mode": "train", "best": "ours compile", "seconds": 1.0,
                                            "reference_compiled_seconds": ratio, "vs_reference_compiled": ratio,
                                            "mfu": mfu}], "rows": []})
    _write(tmp_path, "trainer", {"batch": 192, "dataset": {"num_puzzle_identifiers": 5}, "bench_step": {"examples_per_s": 100},
                                 "runs": [{"name": "plain", "examples_per_s": 100 * share, "seconds_per_step": 1.0,
                                           "vs_bench_step": share, "error": None}]})
    title, rows = gpu_summary.rows_of(tmp_path)
    assert "GPU X" in title
    got = {r[1]: r[4] for r in rows if r[4]}
    assert [got["seed train: ours best (ours compile) vs reference compiled"], got["seed train MFU of ours best"],
            got["plain: trm train examples/s (192 rows/step)"]] == verdicts
    assert ("NOT met" in gpu_summary.render(title, rows)) == (verdicts != ["met"] * 3)

"""report.html / summary.md: self-contained, complete, and rendered by headless Chromium into a non-blank page."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from trm.evaluation.report import PALETTE, grid_html, render_html, render_summary
from trm.evaluation.vote import Voter, load_dataset_files, write_results


@pytest.fixture(scope="module")
def half_wrong(fixtures_dir):
    torch = pytest.importorskip("torch")
    fed = torch.load(fixtures_dir / "evaluator_half_wrong" / "fed_predictions.pt")
    voter = Voter.from_dataset(fixtures_dir / "tiny_dataset")
    voter.add(*(fed[k].numpy() for k in ("puzzle_identifiers", "inputs", "preds", "q_halt_logits")))
    puzzles, _ = load_dataset_files(fixtures_dir / "tiny_dataset")
    return voter.result(), puzzles


def test_html_is_self_contained_and_complete(half_wrong):
    result, puzzles = half_wrong
    page = render_html(result, puzzles, title="half <wrong>")
    assert page.startswith("<!DOCTYPE html>") and "half &lt;wrong&gt;" in page
    for needle in ("http://", "https://", "<script", "<link", "<img", "url("):
        assert needle not in page, needle
    for task in puzzles:
        assert f'id="t-{task}"' in page
    for colour in PALETTE:
        assert colour in page
    # per test input: test input, both attempts, truth, votes
    assert page.count('class="cap">test input') == 7
    assert page.count('class="cap">attempt 1') == 7 and page.count('class="cap">attempt 2') == 7
    assert page.count('class="cap">truth') == 7
    assert page.count('class="cap">votes') == 7
    # pass@1 per task in the summary table: 0.4 overall -> tasks 2 and 4 pass
    rows = re.findall(r'<tr><td class="l"><a href="#t-(\w+)">\w+</a></td><td>\d+</td><td>([\d.]+)</td>', page)
    assert [(t, float(v)) for t, v in rows] == [(t, 1.0 if i in (1, 3) else 0.0) for i, t in enumerate(puzzles)]
    summary = render_summary(result)
    assert "| ARC/pass@1 | 0.4000 |" in summary and "| ARC/pass@2 | 1.0000 |" in summary


def test_grid_cells_use_arc_colours():
    cell = grid_html([[0, 1], [9, 4]])
    assert re.findall(r'class=c(\d)>', cell) == ["0", "1", "9", "4"]
    assert "repeat(2," in cell
    assert "(empty)" in grid_html(np.zeros((0, 0)))


def test_unknown_truth_and_fallback_are_shown():
    puzzles = {"hid": {"train": [], "test": [{"input": [[1, 2]], "output": None}]}}
    voter = Voter(puzzles, ["<blank>", "hid"])
    result = voter.result()
    page = render_html(result, puzzles)
    assert "no usable prediction" in page and 'class="cap">truth' not in page
    assert "n/a" in page


# ----------------------------------------------------------------------------------------------- chromium


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def read_png(data: bytes) -> np.ndarray:
    """A tiny PNG reader (8-bit RGB/RGBA, not interlaced) -> uint8 [h, w, channels]."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            row = line
        elif kind == 1:  # Sub: running sum per channel
            row = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            row = (line + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur, up, vals = [0] * stride, prev.tolist(), line.tolist()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                c = up[i - bpp] if i >= bpp else 0
                pred = (a + up[i]) // 2 if kind == 3 else _paeth(a, up[i], c)
                cur[i] = (vals[i] + pred) & 255
            row = np.array(cur, dtype=np.int64)
        else:
            raise ValueError(f"bad PNG filter {kind} on row {y}")
        out[y] = row
        prev = row
    return out.reshape(height, width, bpp)


def test_png_reader_on_a_known_image():
    # a 3x2 RGB image written with filters None, Sub, Up, Average, Paeth by hand
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8)
    for kind in range(5):
        raw = b""
        prev = np.zeros(9, np.int64)
        for row in pixels.reshape(2, 9).astype(np.int64):
            if kind == 0:
                filt = row
            elif kind == 1:
                filt = row - np.r_[[0, 0, 0], row[:-3]]
            elif kind == 2:
                filt = row - prev
            elif kind == 3:
                filt = row - (np.r_[[0, 0, 0], row[:-3]] + prev) // 2
            else:
                left, upleft = np.r_[[0, 0, 0], row[:-3]], np.r_[[0, 0, 0], prev[:-3]]
                filt = row - np.array([_paeth(a, b, c) for a, b, c in zip(left, prev, upleft)])
            raw += bytes([kind]) + bytes((filt % 256).astype(np.uint8))
            prev = row
        body = struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0)
        png = b"\x89PNG\r\n\x1a\n"
        for name, chunk in ((b"IHDR", body), (b"IDAT", zlib.compress(raw)), (b"IEND", b"")):
            png += struct.pack(">I", len(chunk)) + name + chunk + struct.pack(">I", zlib.crc32(name + chunk))
        assert (read_png(png) == pixels).all(), kind


def test_report_renders_in_headless_chromium(half_wrong, tmp_path, missing):
    browser = _chromium()
    if browser is None:  # a skip; with CI set, an error (tests/conftest.py)
        missing("chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
    result, puzzles = half_wrong
    write_results(result, puzzles, tmp_path / "eval", title="half wrong")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,1600", (tmp_path / "eval" / "report.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    image = read_png(shot.read_bytes())[:, :, :3]
    assert image.shape[:2] == (1600, 1200)
    colours = {tuple(c) for c in np.unique(image.reshape(-1, 3), axis=0).tolist()}
    assert len(colours) > 20, "the page looks blank"
    arc = {tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in PALETTE}
    seen = arc & colours
    assert len(seen) >= 6, f"only {len(seen)} ARC colours on screen"
    background = np.all(image == image[5, -30], axis=-1).mean()
    assert background < 0.9, "almost everything is background"


def test_rerender_from_a_vote_folder(half_wrong, fixtures_dir, tmp_path):
    from trm.evaluation.report import main as report_main

    result, puzzles = half_wrong
    write_results(result, puzzles, tmp_path / "v")
    (tmp_path / "v" / "report.html").unlink()
    assert report_main(["--vote-dir", str(tmp_path / "v"), "--data", str(fixtures_dir / "tiny_dataset")]) == 0
    page = (tmp_path / "v" / "report.html").read_text()
    assert all(f'id="t-{task}"' in page for task in puzzles) and "0.4000" in page

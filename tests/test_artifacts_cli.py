"""`trm artifacts ls|cp` against a real `weed mini`, and the embedded-server fallback when nothing is configured.

    .venv/bin/python -m pytest -q tests/test_artifacts_cli.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trm.storage import COMPLETE, S3Store, join
from trm.storage.cli import human_size, main
from trm.storage.embedded import pid_alive, read_state

pytestmark = pytest.mark.s3


def test_human_size():
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(5 * 1024 ** 3) == "5.0 GiB"


@pytest.fixture
def run_prefix(s3_env):
    return f"s3://trm/cli-{os.urandom(4).hex()}"


def test_cp_file_both_ways_and_ls(run_prefix, tmp_path, capsys):
    src = tmp_path / "submission.json"
    src.write_bytes(b'{"t": []}' * 200)
    assert main(["cp", str(src), run_prefix + "/eval/"]) == 0
    assert S3Store.from_env().read_bytes(join(run_prefix, "eval/submission.json")) == src.read_bytes()
    assert main(["cp", str(src), run_prefix + "/renamed.json"]) == 0
    capsys.readouterr()

    assert main(["ls", run_prefix]) == 0
    out = capsys.readouterr().out
    assert f"{run_prefix}/eval/" in out and "DIR" in out
    assert f"{run_prefix}/renamed.json" in out and human_size(src.stat().st_size) in out
    assert "1 object(s)" in out

    assert main(["ls", "-r", run_prefix]) == 0
    out = capsys.readouterr().out
    assert f"{run_prefix}/eval/submission.json" in out and "2 object(s)" in out

    assert main(["ls", f"{run_prefix}/renamed.json"]) == 0  # a single object
    assert "renamed.json" in capsys.readouterr().out

    down = tmp_path / "down"
    down.mkdir()
    assert main(["cp", f"{run_prefix}/eval/submission.json", str(down)]) == 0
    assert (down / "submission.json").read_bytes() == src.read_bytes()
    assert main(["cp", f"{run_prefix}/renamed.json", str(tmp_path / "x.json")]) == 0
    assert (tmp_path / "x.json").read_bytes() == src.read_bytes()


def test_cp_folder_both_ways(run_prefix, tmp_path, capsys):
    src = tmp_path / "dataset"
    (src / "train").mkdir(parents=True)
    (src / "train" / "inputs.npy").write_bytes(os.urandom(5000))
    (src / "dataset.json").write_text("{}")
    assert main(["cp", str(src), run_prefix + "/dataset"]) == 0
    store = S3Store.from_env()
    assert store.is_complete(run_prefix + "/dataset")

    assert main(["cp", run_prefix + "/dataset", str(tmp_path / "copy")]) == 0  # new local folder: exactly there
    assert (tmp_path / "copy" / "train" / "inputs.npy").read_bytes() == (src / "train" / "inputs.npy").read_bytes()
    assert (tmp_path / "copy" / COMPLETE).exists()
    assert main(["cp", run_prefix + "/dataset", str(tmp_path / "copy")]) == 0  # existing folder: inside it
    assert (tmp_path / "copy" / "dataset" / "dataset.json").read_text() == "{}"

    # s3 -> s3
    assert main(["cp", run_prefix + "/dataset", run_prefix + "/dataset-2"]) == 0
    assert store.is_complete(run_prefix + "/dataset-2")
    assert store.read_bytes(run_prefix + "/dataset-2/dataset.json") == b"{}"

    # an incomplete folder is refused unless asked for
    store.write_bytes(run_prefix + "/half/a.bin", b"a")
    capsys.readouterr()
    assert main(["cp", run_prefix + "/half", str(tmp_path / "half")]) == 1
    assert "incomplete" in capsys.readouterr().err and not (tmp_path / "half").exists()
    assert main(["cp", "--allow-incomplete", run_prefix + "/half", str(tmp_path / "half")]) == 0
    assert (tmp_path / "half" / "a.bin").read_bytes() == b"a"


def test_errors_are_one_line(run_prefix, tmp_path, capsys):
    assert main(["cp", run_prefix + "/nothing", str(tmp_path / "n")]) == 1
    assert "no such object or folder" in capsys.readouterr().err
    assert main(["cp", str(tmp_path / "absent"), run_prefix + "/x"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["ls", run_prefix + "/nothing"]) == 1
    with pytest.raises(SystemExit):
        main(["ls", "/local/path"])


def test_local_to_local_copy(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("f")
    assert main(["cp", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "f.txt").read_text() == "f"
    assert main(["cp", str(tmp_path / "a" / "f.txt"), str(tmp_path / "b") + "/"]) == 0


def test_no_endpoint_starts_and_reuses_embedded_server(tmp_path):
    """Without TRM_S3_ENDPOINT, `trm artifacts` starts the server under TRM_HOME once and reuses it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TRM_S3"))}
    env["TRM_HOME"] = str(tmp_path / "home")
    src = tmp_path / "f.txt"
    src.write_text("hello")
    trm = [sys.executable, "-m", "trm.cli"]
    try:
        up = subprocess.run(trm + ["artifacts", "cp", str(src), "s3://trm/r/f.txt"], env=env,
                            capture_output=True, text=True, timeout=120)
        assert up.returncode == 0, up.stderr
        assert "embedded S3 server" in up.stderr
        state = read_state(Path(env["TRM_HOME"]))
        assert state and pid_alive(state["pid"])
        ls = subprocess.run(trm + ["artifacts", "ls", "s3://trm/r/"], env=env, capture_output=True, text=True,
                            timeout=120)
        assert ls.returncode == 0 and "s3://trm/r/f.txt" in ls.stdout and "5 B" in ls.stdout
        assert read_state(Path(env["TRM_HOME"]))["pid"] == state["pid"]  # reused, not restarted
        assert state["secret_key"] not in up.stdout + up.stderr + ls.stdout + ls.stderr
    finally:
        subprocess.run(trm + ["s3", "stop"], env=env, capture_output=True, text=True, timeout=60)
    assert not pid_alive(state["pid"])

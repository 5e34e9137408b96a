"""Fault and misuse suite: what a user who re-runs, retries and makes mistakes does, and what must (not) happen.

    .venv/bin/python -m pytest -q tests/test_faults.py

Each test is one scenario of issue 12, and each failed on the code before that issue was fixed:
a reused run root with other parameters, `resume=False` on a folder with higher steps, other training parameters
on an old checkpoint folder, a re-upload with fewer files, a failed or concurrent re-upload, a truncated newest
checkpoint, a corrupt old `meta.json`, a wrong bucket, an unreachable or refusing S3 before a build, and the
ordinary mistakes that used to end in a traceback. The SIGTERM tests are in test_preemption.py, the seeded
SIGKILL trials in test_kill_trials.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trm.checkpoint import Checkpoints
from trm.storage import COMPLETE, S3Store, join, localize

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["preset=cpu-tiny", "global_batch_size=4", "micro_batch_size=null", "num_threads=1", "progress=False",
         "wandb=off", "epochs=1000", "eval_interval=1000", "checkpoint_every_n_steps=2", "arch.halt_max_steps=3",
         "ema=True", "run_name=faults"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="disabled", **extra)
    return env


def trm(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trm.cli", *args], cwd=ROOT, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = trm("train", *TRAIN, *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def by_step(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = {k: v for k, v in json.loads(line).items() if k != "time"}
        out.setdefault(record["step"], {}).update(record)
    return out


def one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with a one-line message containing every needle, and no traceback."""
    assert done.returncode != 0, done.stdout + done.stderr
    err = done.stderr
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def unique(name: str) -> str:
    return f"s3://trm/faults/{name}-{os.urandom(4).hex()}"


def _fake_steps(root: Path | str, steps: list[int], generation: str = "old-run") -> None:
    ck = Checkpoints(root, keep_last=10)
    ck.generation = generation
    for step in steps:
        ck.save(step, objects={"model.pt": {"w": torch.full((4,), float(step))}}, texts={"config.yaml": "x: 1\n"})


# -- run identity ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    pytest.importorskip("kfp")
    from pipeline.local import subset_source

    return subset_source(tmp_path_factory.mktemp("src"), 2, ["training2", "evaluation2"])


def _check_args(source: str, run_id: str, **changes) -> dict:
    from test_components import check_args

    return check_args(source, run_prefix="tests/faults", run_id=run_id, **changes)


@pytest.mark.s3
def test_reused_run_root_with_other_dataset_parameters_is_refused(s3_env, source, capsys):
    from components.check import check_params
    from components.runtime import read_json

    run_id = f"ident-{os.urandom(3).hex()}"
    root = check_params.python_func(**_check_args(source, run_id)).run_root
    with pytest.raises(ValueError, match=r"other dataset parameters \(num_aug: 1 -> 4; subsets: .*\)") as info:
        check_params.python_func(**_check_args(source, run_id, num_aug=4, subsets=["evaluation2", "training2"]))
    assert "run_id" in str(info.value)
    assert read_json(f"{root}/params.json")["num_aug"] == 1, "the refused submission overwrote params.json"
    # other training parameters on the same root: allowed, and the log says the old checkpoints go aside
    capsys.readouterr()
    check_params.python_func(**_check_args(source, run_id, lr=1e-3))
    assert "lr: 0.003 -> 0.001" in capsys.readouterr().out
    recorded = read_json(f"{root}/params.json")
    assert recorded["identity"]["training"]["lr"] == 1e-3 and recorded["identity"]["dataset"]["num_aug"] == 1


@pytest.mark.s3
def test_build_step_never_reuses_a_dataset_built_with_other_parameters(s3_env, source, tmp_path):
    from kfp import dsl

    from components.build_dataset import build_dataset
    from trm.storage import open_store

    root = unique("build")

    def build(**changes):
        args = dict(s3_endpoint="", run_root=root, input_prefix=source, subsets=["training2", "evaluation2"],
                    test_set_names=["evaluation2"], train_only_subsets=[], num_aug=1, seed=42,
                    enable_train_translation=True,
                    dataset=dsl.Dataset(name="d", uri=str(tmp_path / f"d{os.urandom(2).hex()}"), metadata={}))
        args.update(changes)
        build_dataset.python_func(**args)
        return args["dataset"]

    first = build()
    manifest = open_store().manifest(f"{root}/dataset")
    assert manifest.meta["build"]["seed"] == 42
    with pytest.raises(ValueError, match=r"built with other parameters \(seed: 42 -> 7\)"):
        build(seed=7)
    with pytest.raises(ValueError, match=r"num_aug: 1 -> 3"):
        build(num_aug=3)
    assert build().metadata == first.metadata  # the same parameters: reused
    # a dataset written by an older version (its marker has no build record) is not silently taken either
    store = open_store()
    store.write_bytes(f"{root}/dataset/{COMPLETE}", json.dumps({"files": 1, "bytes": 1}).encode())
    with pytest.raises(ValueError):
        build()


def test_resume_false_moves_higher_steps_aside_and_keeps_the_new_ones(tiny, tmp_path):
    """Steps 1000/2000/3000 of an earlier run are in the folder; a run with resume=False must not lose its own
    checkpoints to keep-last-k, and `latest` must be the new run's."""
    run = tmp_path / "run"
    _fake_steps(run / "checkpoints", [1000, 2000, 3000])
    done = train(f"data_paths=[{tiny}]", f"run_dir={run}", "max_steps=4", "keep_last=1", "resume=False")
    ck = Checkpoints(run / "checkpoints")
    assert ck.latest() == str(run / "checkpoints" / "step-4"), ck.complete_steps()
    assert ck.complete_steps() == [4]
    assert "resume=False: moved 3 existing checkpoint(s)" in done.stderr
    aside = list((run / "checkpoints" / "aside").glob("*-superseded/step-3000/meta.json"))
    assert len(aside) == 1, "the old checkpoints must be kept aside, not deleted"


def test_other_training_parameters_never_resume_old_checkpoints(tiny, tmp_path):
    run = tmp_path / "run"
    train(f"data_paths=[{tiny}]", f"run_dir={run}", "max_steps=2", "lr=3e-3")
    done = train(f"data_paths=[{tiny}]", f"run_dir={run}", "max_steps=2", "lr=1e-3")
    assert "trained with other parameters (lr: 0.003 -> 0.001)" in done.stderr
    assert "from scratch" in done.stderr
    steps = by_step(run)
    assert sorted(steps) == [1, 2] and steps[2]["train/lr"] < 1e-3 + 1e-12
    meta = json.loads((run / "checkpoints" / "step-2" / "meta.json").read_text())
    assert meta["training"]["lr"] == 1e-3
    old = list((run / "checkpoints" / "aside").glob("*-superseded"))
    assert len(old) == 1 and (old[0] / "step-2" / "meta.json").is_file()
    assert (old[0] / "metrics.jsonl").is_file(), "the old run's metrics go aside with its checkpoints"
    # the same parameters again: resumed, not restarted
    again = train(f"data_paths=[{tiny}]", f"run_dir={run}", "max_steps=2", "lr=1e-3")
    assert "resumed from step 2" in again.stderr


# -- checkpoints ----------------------------------------------------------------------------------------------

def test_truncated_newest_checkpoint_is_set_aside_and_the_previous_one_used(tiny, tmp_path):
    """(That the continuation is exact is shown by test_preemption.py and test_kill_trials.py; here: that the run
    goes on at all, from the previous checkpoint, and says so.)"""
    broken = tmp_path / "broken"
    train(f"data_paths=[{tiny}]", f"run_dir={broken}", "max_steps=4", "keep_last=3")
    model = broken / "checkpoints" / "step-4" / "model.pt"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a disk that filled up, a bad copy
    done = train(f"data_paths=[{tiny}]", f"run_dir={broken}", "max_steps=6")
    assert "WARNING" in done.stderr and "step-4" in done.stderr and "resumed from step 2" in done.stderr
    assert list((broken / "checkpoints" / "aside").glob("*-bad/step-4"))
    assert sorted(by_step(broken)) == list(range(1, 7))
    assert Checkpoints(broken / "checkpoints").latest().endswith("step-6")


def test_unloadable_or_resized_checkpoint_files_are_set_aside(tmp_path):
    """step-3: a text file shorter than meta.json says (only the size check sees it); step-2: the right size but
    garbage inside (torch cannot load it). Both are moved aside; step-1 is used."""
    ck = Checkpoints(tmp_path, keep_last=5)
    ck.fingerprint, ck.identity = "fp", {}
    for step in (1, 2, 3):
        ck.save(step, objects={"model.pt": {"w": torch.zeros(8)}, "optimizer.pt": {}, "train_state.pt": {}},
                texts={"config.yaml": "lr: 0.001\n" * 20})
    (tmp_path / "step-3" / "config.yaml").write_text("lr: 0.001\n")
    path = tmp_path / "step-2" / "model.pt"
    path.write_bytes(b"\0" * path.stat().st_size)
    fresh = Checkpoints(tmp_path, keep_last=5)
    where, loaded = fresh.select("fp", {}, required=("model.pt",))
    assert where == str(tmp_path / "step-1") and torch.equal(loaded["model.pt"]["w"], torch.zeros(8))
    assert list(tmp_path.glob("aside/*-bad/step-2/model.pt"))
    assert list(tmp_path.glob("aside/*-bad/step-3/config.yaml"))


@pytest.mark.s3
def test_damaged_s3_checkpoint_is_set_aside_and_the_previous_one_used(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TRM_HOME", str(tmp_path / "home"))
    root = unique("ckpt")
    ck = Checkpoints(root, keep_last=5)
    ck.fingerprint, ck.identity = "fp", {"lr": 1}
    for step in (1, 2, 3):
        ck.save(step, objects={"model.pt": {"w": torch.full((4,), float(step))}, "train_state.pt": {}})
    store = S3Store.from_env()
    store.delete(f"{root}/step-3/model.pt")  # e.g. a lifecycle rule, a half-finished manual copy
    store.write_bytes(f"{root}/step-2/train_state.pt", b"not a torch file")  # replaced after the marker
    where, loaded = Checkpoints(root).select("fp", {"lr": 1})
    assert where == f"{root}/step-1" and loaded["model.pt"]["w"][0] == 1
    keys = store.list(root)
    assert any(re.search(r"/aside/[^/]+-bad/step-3/", k) for k in keys)
    assert any(re.search(r"/aside/[^/]+-bad/step-2/", k) for k in keys)
    assert Checkpoints(root).complete_steps() == [1]


def test_corrupt_old_meta_never_fails_a_later_save(tmp_path):
    ck = Checkpoints(tmp_path, keep_last=1)
    for step in (1, 2):
        ck.save(step, objects={"model.pt": {"w": torch.zeros(2)}}, evaluated=True)
    (tmp_path / "step-1" / "meta.json").write_text("{not json")
    for step in (3, 4):  # used to raise in prune() after the folder was written
        where = ck.save(step, objects={"model.pt": {"w": torch.zeros(2)}})
        assert Path(where).is_dir()
    assert ck.latest() == str(tmp_path / "step-4")


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path):
    _fake_steps(tmp_path, [1000, 2000, 3000], generation="someone-else")
    ck = Checkpoints(tmp_path, keep_last=1)
    ck.generation = "this-run"
    where = ck.save(100, objects={"model.pt": {"w": torch.zeros(2)}})
    assert Path(where).is_dir(), "save() returned a folder that pruning deleted"
    ck.save(200, objects={"model.pt": {"w": torch.zeros(2)}})
    assert ck.complete_steps() == [200, 1000, 2000, 3000]  # its own older step pruned, nobody else's


# -- S3 folders ------------------------------------------------------------------------------------------------

def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _read(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != COMPLETE}


@pytest.mark.s3
def test_reupload_with_fewer_files_serves_only_the_new_files(s3_env, tmp_path):
    from trm.storage.cli import main as artifacts

    store = S3Store.from_env()
    uri = unique("fewer")
    old = {"a.npy": b"A" * 100, "b.npy": b"B" * 100, "sub/c.json": b"{}"}
    new = {"a.npy": b"a2" * 10, "sub/d.json": b"[]"}
    store.upload_dir(_tree(tmp_path / "v1", old), uri)
    store.upload_dir(_tree(tmp_path / "v2", new), uri)
    keys = sorted(u[len(uri) + 1:] for u in store.list(uri))
    assert keys == sorted([*new, COMPLETE]), keys
    assert _read(store.download_dir(uri, tmp_path / "dl")) == new
    assert _read(localize(uri, cache_dir=tmp_path / "cache")) == new
    assert artifacts(["cp", uri, str(tmp_path / "cp")]) == 0
    assert _read(tmp_path / "cp") == new


@pytest.mark.s3
def test_failed_or_concurrent_reupload_is_never_read_as_a_mix(s3_env, tmp_path, monkeypatch):
    store = S3Store.from_env()
    uri = unique("mix")
    v1 = {f"f{i}.bin": bytes([i]) * 1000 for i in range(4)}
    v2 = {f"f{i}.bin": bytes([10 + i]) * 999 for i in range(3)}
    store.upload_dir(_tree(tmp_path / "v1", v1), uri)
    localize(uri, cache_dir=tmp_path / "cache")  # a reader's cached copy of v1

    # 1. a re-upload that dies after one file: no reader takes the half-replaced folder for whole
    real = S3Store.put_file
    calls = {"n": 0}

    def dies(self, path, target):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network gone (simulated)")
        return real(self, path, target)

    monkeypatch.setattr(S3Store, "put_file", dies)
    store.workers = 1
    with pytest.raises(ConnectionError):
        store.upload_dir(_tree(tmp_path / "v2", v2), uri)
    monkeypatch.setattr(S3Store, "put_file", real)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        store.download_dir(uri, tmp_path / "dl")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        localize(uri, cache_dir=tmp_path / "cache")
    store.upload_dir(tmp_path / "v2", uri)  # the retry finishes it
    assert _read(localize(uri, cache_dir=tmp_path / "cache")) == v2

    # 2. a second writer replaces one file after the marker was written: readers refuse instead of mixing
    from trm.storage import DamagedFolder

    store.write_bytes(join(uri, "f0.bin"), b"x" * 999)
    with pytest.raises(DamagedFolder, match="f0.bin"):
        store.download_dir(uri, tmp_path / "dl2")
    with pytest.raises(DamagedFolder, match="f0.bin"):
        store.verify_folder(uri)

    # 3. two uploads to one prefix at once: the one that was overtaken does not mark the folder complete
    other = S3Store.from_env()
    started = {"done": False}

    def overtaken(self, path, target):
        if self is store and not started["done"]:
            started["done"] = True
            other.upload_dir(_tree(tmp_path / "v3", {"z.bin": b"z"}), uri)
        return real(self, path, target)

    monkeypatch.setattr(S3Store, "put_file", overtaken)
    with pytest.raises(RuntimeError, match="another upload"):
        store.upload_dir(tmp_path / "v1", uri)
    monkeypatch.setattr(S3Store, "put_file", real)
    assert store.verify_folder(uri) is not None  # the other writer's folder is whole ... unless we mixed it
    assert _read(store.download_dir(uri, tmp_path / "dl3")) == {"z.bin": b"z"}


@pytest.mark.s3
def test_artifacts_cp_refuses_to_replace_a_foreign_prefix(s3_env, tmp_path, capsys):
    from trm.storage.cli import main as artifacts

    store = S3Store.from_env()
    prefix = unique("foreign")
    store.write_bytes(f"{prefix}/someone/else.txt", b"keep me")
    assert artifacts(["cp", str(_tree(tmp_path / "d", {"x": b"1"})), prefix]) == 1
    assert "not a folder written by trm" in capsys.readouterr().err
    assert store.read_bytes(f"{prefix}/someone/else.txt") == b"keep me"


@pytest.mark.s3
def test_local_copies_of_similar_uris_never_collide(s3_env, tmp_path):
    from trm.train import mirror_dir

    store = S3Store.from_env()
    base = unique("names")
    store.upload_dir(_tree(tmp_path / "x", {"f": b"underscore"}), f"{base}/a_b")
    store.upload_dir(_tree(tmp_path / "y", {"f": b"slash"}), f"{base}/a/b")
    store.upload_dir(_tree(tmp_path / "z", {"f": b"parent"}), f"{base}/a")  # keeps the folder a/b inside it
    cache = tmp_path / "cache"
    got = {name: localize(f"{base}/{name}", cache_dir=cache) for name in ("a/b", "a_b", "a")}
    assert len(set(got.values())) == 3
    assert {name: (path / "f").read_bytes() for name, path in got.items()} == {
        "a_b": b"underscore", "a/b": b"slash", "a": b"parent"}
    assert localize(f"{base}/a/b", cache_dir=cache) == got["a/b"]  # still whole after its parent was fetched
    home = tmp_path / "home"
    assert mirror_dir(home, "s3://trm/runs/a_b") != mirror_dir(home, "s3://trm/runs/a/b")


@pytest.mark.s3
def test_old_format_markers_are_still_read(s3_env, tmp_path):
    """Folders written before manifests (`{"files": N, "bytes": B}`) stay readable when they match, and are
    refused with a clear message when they do not."""
    store = S3Store.from_env()
    uri = unique("legacy")
    store.write_bytes(join(uri, "a.txt"), b"aa")
    store.write_bytes(join(uri, "b.txt"), b"b")
    store.write_bytes(join(uri, COMPLETE), json.dumps({"files": 2, "bytes": 3, "id": "x"}).encode())
    from trm.storage import DamagedFolder

    assert _read(store.download_dir(uri, tmp_path / "ok")) == {"a.txt": b"aa", "b.txt": b"b"}
    store.write_bytes(join(uri, "c.txt"), b"stale")
    with pytest.raises(DamagedFolder, match="old-format"):
        store.download_dir(uri, tmp_path / "bad")


# -- clear errors -------------------------------------------------------------------------------------------------

@pytest.mark.s3
def test_wrong_bucket_fails_in_one_line(s3_env, tmp_path):
    env = _env(**s3_env)
    one_line_error(trm("artifacts", "ls", "s3://no-such-bucket/", env=env), "no-such-bucket", "does not exist")
    one_line_error(trm("artifacts", "cp", "s3://no-such-bucket/x", str(tmp_path / "never-written"), env=env),
                   "bucket 'no-such-bucket' does not exist")
    assert not (tmp_path / "never-written").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _subset(tmp_path: Path, arc_dir: Path, task_id: str | None = None) -> str:
    data = json.loads((arc_dir / "arc-agi_evaluation2_challenges.json").read_text())
    first = dict(list(data.items())[:2])
    if task_id:
        first = {task_id: next(iter(first.values()))}
    (tmp_path / "src_ev_challenges.json").write_text(json.dumps(first))
    return str(tmp_path / "src")


def test_unreachable_s3_is_found_before_the_build(arc_dir, tmp_path, monkeypatch, capsys):
    import trm.data.build as build

    prefix = _subset(tmp_path, arc_dir)
    port = _closed_port()
    for key, value in {"TRM_S3_ENDPOINT": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k",
                       "AWS_SECRET_ACCESS_KEY": "unreachable-secret-1", "TRM_S3_RETRY_SECONDS": "1"}.items():
        monkeypatch.setenv(key, value)
    built = []
    monkeypatch.setattr(build, "build_into", lambda *a, **k: built.append(1) or {})
    start = time.monotonic()
    code = build.main(["--input-file-prefix", prefix, "--output-dir", "s3://trm/x/dataset", "--subsets", "ev",
                       "--num-aug", "1", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and not built, "the build ran before the store was checked"
    assert f"127.0.0.1:{port}" in err and "unreachable-secret-1" not in err
    assert time.monotonic() - start < 30


@pytest.mark.s3
def test_refused_credentials_are_found_before_the_build(s3_server, arc_dir, tmp_path, monkeypatch, capsys):
    import trm.data.build as build
    from trm.storage import store as store_module

    prefix = _subset(tmp_path, arc_dir)
    for key, value in dict(s3_server.env(), AWS_SECRET_ACCESS_KEY="wrong-secret-value").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(store_module, "_STORES", {})
    built = []
    monkeypatch.setattr(build, "build_into", lambda *a, **k: built.append(1) or {})
    code = build.main(["--input-file-prefix", prefix, "--output-dir", "s3://trm/x/dataset", "--subsets", "ev",
                       "--num-aug", "1", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and not built
    assert "refused access key" in err and "wrong-secret-value" not in err


def test_ordinary_mistakes_end_in_one_sentence(tmp_path, arc_dir, tiny):
    missing = tmp_path / "nope" / "submission.json"
    one_line_error(trm("export-submission", "--submission", str(missing)), str(missing))
    bad = tmp_path / "challenges.json"
    bad.write_text('{"t1": {"train": [], "test": [')
    sub = tmp_path / "sub.json"
    sub.write_text("{}")
    one_line_error(trm("export-submission", "--submission", str(sub), "--challenges", str(bad)), str(bad))
    bad.write_text('{"t1": {"train": [], "test": [{"no_input": 1}]}}')
    one_line_error(trm("export-submission", "--submission", str(sub), "--challenges", str(bad), "--fill-missing"),
                   "t1", "input")
    data = tmp_path / "data"
    one_line_error(trm("evaluate", "--checkpoint", str(tmp_path / "runs" / "step-9"), "--data", tiny,
                       "--output-dir", str(tmp_path / "out")), "step-9")
    one_line_error(trm("train", *TRAIN, f"data_paths=[{data}]", f"run_dir={tmp_path / 'r'}"), str(data))
    # a task id that would break variant names and file names is refused when the source is read
    prefix = _subset(tmp_path, arc_dir, task_id="abc|||t1")
    one_line_error(trm("build-dataset", "--input-file-prefix", prefix, "--output-dir", str(tmp_path / "ds"),
                       "--subsets", "ev", "--num-aug", "1", "--workers", "1"), "abc|||t1")
    assert not (tmp_path / "ds").exists()
    # TRM_DEBUG=1 shows where it came from
    debug = trm("export-submission", "--submission", str(missing), env=_env(TRM_DEBUG="1"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.s3
def test_checkpoint_staged_locally_is_uploaded_by_the_next_start(s3_env, tmp_path, monkeypatch):
    """A process killed between writing a checkpoint locally and uploading it: the next start uploads it first,
    so the preemption checkpoint is not lost when S3 was slow."""
    import trm.checkpoint as ckpt_module

    monkeypatch.setenv("TRM_HOME", str(tmp_path / "home"))
    root = unique("staged")
    ck = Checkpoints(root, keep_last=3)
    ck.fingerprint, ck.identity = "fp", {}
    ck.save(1, objects={"model.pt": {"w": torch.ones(2)}})
    real = ckpt_module.publish

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("SIGKILL stand-in: the upload never happened")

    monkeypatch.setattr(ckpt_module, "publish", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.save(2, objects={"model.pt": {"w": torch.full((2,), 2.0)}})
    monkeypatch.setattr(ckpt_module, "publish", real)
    assert Checkpoints(root).complete_steps() == [1]
    where, loaded = Checkpoints(root).select("fp", {})
    assert where == f"{root}/step-2" and loaded["model.pt"]["w"][0] == 2
    assert not any(ck.staging_dir().glob("step-*")), "the staged copy stays after its upload"


def test_temporaries_of_other_hosts_are_judged_by_age_not_pid(tmp_path):
    """Pods sharing a volume: a temporary of another host is never removed because its pid is unknown here."""
    from trm.storage.local import host, reap_temporaries, temp_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    mine_dead = tmp_path / f".ds.building-{host()}-{dead}-0123abcd"
    mine_live = tmp_path / temp_name("ds", "building")
    other_recent = tmp_path / f".ds.building-other-pod-7-{dead}-0123abcd"
    other_old = tmp_path / f".ds.building-other-pod-7-{dead}-4567cdef"
    for path in (mine_dead, mine_live, other_recent, other_old):
        path.mkdir()
    os.utime(other_old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    removed = reap_temporaries(tmp_path, "ds")
    assert sorted(p.name for p in removed) == sorted([mine_dead.name, other_old.name])
    assert mine_live.exists() and other_recent.exists()


def test_atomic_writes_from_many_writers_never_collide(tmp_path):
    import threading

    from trm.storage.local import atomic_write

    target = tmp_path / "metrics.json"
    errors = []

    def writer(i: int) -> None:
        try:
            for j in range(30):
                atomic_write(target, json.dumps({"writer": i, "n": j, "pad": "x" * 5000}))
        except Exception as exc:  # noqa: BLE001 - collected and shown
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert json.loads(target.read_text())["n"] == 29
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

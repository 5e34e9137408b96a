"""Break the code on purpose, once per headline claim, and check that the tests guarding the claim then fail.

    .venv/bin/python tests/mutations.py                      # every mutation (make mutations; about 4 min, 2 cores)
    .venv/bin/python tests/mutations.py --list               # the mutations and the tests that guard them
    .venv/bin/python tests/mutations.py resume-rng atomic-temp-name    # some of them

How: the tracked (and untracked, not ignored) files are copied to a scratch folder; the checkout is never
touched. First the guarding tests run there unchanged and must pass. Then, for each mutation, one exact snippet
of one file is replaced in a fresh scratch copy and its tests run; the mutation is "caught" when pytest fails.
A snippet that no longer occurs verbatim is "stale" (the code moved on: update the row). The Markdown table it
prints is the one in docs/CONTRIBUTING.md. Exit code 0 when every mutation was caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    claim: str  # what breaks, in words
    path: str  # file, relative to the checkout
    old: str | tuple[str, ...]  # exact snippet(s), each occurring exactly once
    new: str | tuple[str, ...]  # its replacement(s)
    tests: tuple[str, ...]  # pytest node ids that must fail

    def edits(self) -> list[tuple[str, str]]:
        olds = (self.old,) if isinstance(self.old, str) else self.old
        news = (self.new,) if isinstance(self.new, str) else self.new
        return list(zip(olds, news, strict=True))


MUTATIONS = (
    # -- resume -------------------------------------------------------------------------------------------------
    Mutation("resume-rng", "resume forgets the RNG state (ACT exploration, dropout) of each rank",
             "trm/train.py", 'set_rng_state(mine["rng"], self.generator, self.env.device)', "pass",
             ("tests/test_resume.py::test_save_then_restore_gives_back_the_whole_training_state",)),
    Mutation("resume-position", "resume restarts the epoch instead of continuing at the saved batch",
             "trm/train.py", 'step=state["position"]["step"])', "step=0)",
             ("tests/test_resume.py::test_save_then_restore_gives_back_the_whole_training_state",)),
    Mutation("resume-ema", "resume leaves the EMA weights at their fresh values",
             "trm/train.py", 'self.ema.load_state_dict(data["ema.pt"])', "pass",
             ("tests/test_resume.py::test_save_then_restore_gives_back_the_whole_training_state",)),
    Mutation("resume-carries", "resume restarts every rank's ACT carries empty (all halted)",
             "trm/train.py", 'self._saved_carries = mine["carries"]', "self._saved_carries = None",
             ("tests/test_resume.py::test_save_then_restore_gives_back_the_whole_training_state",)),
    Mutation("resume-nothing", "resume restores neither EMA, RNG states, ACT carries nor the position in the epoch",
             "trm/train.py",
             ('self.ema.load_state_dict(data["ema.pt"])', 'set_rng_state(mine["rng"], self.generator, self.env.device)',
              'self._saved_carries = mine["carries"]', 'step=state["position"]["step"])'),
             ("pass", "pass", "self._saved_carries = None", "step=0)"),
             ("tests/test_resume.py::test_sigkill_inside_an_epoch_and_resume_logs_exactly_the_same",)),
    Mutation("preempt-handler", "SIGTERM kills the trainer instead of ending in a checkpoint",
             "trm/train.py", "self._previous = signal.signal(signal.SIGTERM, self._handle)",
             "self._previous = signal.getsignal(signal.SIGTERM)",
             ("tests/test_preemption.py::test_sigterm_checkpoints_the_step_and_resume_continues_exactly",)),
    Mutation("pod-sigterm", "the in-pod train step dies on SIGTERM and orphans torchrun",
             "components/runtime.py", "        child.send_signal(signal.SIGTERM)\n", "        pass\n",
             ("tests/test_components.py::test_run_command_passes_sigterm_on_and_waits_for_the_child",)),
    # -- checkpoints --------------------------------------------------------------------------------------------
    Mutation("prune-generations", "pruning ranks checkpoints of every run in the folder (new ones deleted)",
             "trm/checkpoint.py", 'if str(meta.get("generation", "")) == str(self.generation or ""):', "if True:",
             ("tests/test_faults.py::test_prune_never_deletes_the_checkpoint_just_written",)),
    Mutation("fallback", "a damaged newest checkpoint stops every retry instead of being set aside",
             "trm/checkpoint.py", "except (BadCheckpoint, FileNotFoundError, EOFError) as err:",
             "except (FileNotFoundError, EOFError) as err:",
             ("tests/test_faults.py::test_truncated_newest_checkpoint_is_set_aside_and_the_previous_one_used",)),
    Mutation("verify-sizes", "a checkpoint file of another size than meta.json lists is used anyway",
             "trm/checkpoint.py", ("if have[name] != size:", "if name in sizes and size != sizes[name]:"),
             ("if False:", "if False:"),
             ("tests/test_faults.py::test_unloadable_or_resized_checkpoint_files_are_set_aside",)),
    Mutation("training-identity", "other training parameters resume the old run's checkpoints",
             "trm/checkpoint.py", "if theirs != fingerprint:", "if False:",
             ("tests/test_faults.py::test_other_training_parameters_never_resume_old_checkpoints",)),
    Mutation("dataset-identity", "a reused run_id with other dataset parameters reuses the old dataset",
             "trm/identity.py", "    if diff:\n        raise ValueError", "    if False:\n        raise ValueError",
             ("tests/test_faults.py::test_reused_run_root_with_other_dataset_parameters_is_refused",)),
    # -- atomicity ----------------------------------------------------------------------------------------------
    Mutation("atomic-temp-name", "local atomic writes share one fixed temporary name",
             "trm/storage/local.py", "tmp = path.with_name(temp_name(path.name))",
             'tmp = path.with_name(path.name + ".tmp")',
             ("tests/test_faults.py::test_atomic_writes_from_many_writers_never_collide",)),
    Mutation("marker-first", "a re-upload keeps the old `_COMPLETE` while files are replaced",
             "trm/storage/store.py", "        self.delete(join(uri, COMPLETE))\n\n", "\n",
             ("tests/test_storage.py::test_complete_marker_is_the_last_write",
              "tests/test_storage.py::test_reupload_removes_marker_first")),
    Mutation("marker-before-files", "an upload writes `_COMPLETE` before its files",
             "trm/storage/store.py", "        listing = dict(self._map(put, files))\n",
             "        self.write_bytes(join(uri, COMPLETE), _manifest_bytes({}, meta))\n"
             "        listing = dict(self._map(put, files))\n",
             ("tests/test_storage.py::test_complete_marker_is_the_last_write",)),
    Mutation("partial-object", "an upload makes a partial object visible under the final name",
             "trm/storage/store.py", '        result = self._retry(f"upload {path} -> {uri}",',
             '        self._client.put_object(bucket, key, __import__("io").BytesIO(b"part"), 4)\n'
             '        result = self._retry(f"upload {path} -> {uri}",',
             ("tests/test_embedded_s3.py::test_upload_survives_server_crash_midway",)),
    Mutation("s3-retry", "S3 calls give up at the first connection error (a restarted server ends the run)",
             "trm/storage/store.py", "def _retryable(exc: BaseException) -> bool:\n",
             "def _retryable(exc: BaseException) -> bool:\n    return False\n",
             # also fails test_pipeline_survives_an_s3_restart_during_training, after KFP's three step retries (~7 min)
             ("tests/test_embedded_s3.py::test_folder_upload_survives_graceful_restart",)),
    Mutation("stale-keys", "a re-upload with fewer files leaves the old files in a folder marked complete",
             "trm/storage/store.py", "        self._remove_stale(uri, set(listing))\n", "",
             ("tests/test_faults.py::test_reupload_with_fewer_files_serves_only_the_new_files",)),
    Mutation("one-writer", "a second writer to one S3 folder is not detected",
             "trm/storage/store.py", "        if current != token:\n", "        if False:\n",
             ("tests/test_faults.py::test_failed_or_concurrent_reupload_is_never_read_as_a_mix",)),
    # -- secrets ------------------------------------------------------------------------------------------------
    Mutation("redact-secret", "error messages quote the S3 secret key",
             "trm/storage/config.py", 'text = text.replace(secret, "***")', "pass",
             ("tests/test_storage.py::test_errors_quoting_the_secret_are_scrubbed",)),
    Mutation("redact-url", "credentials inside an endpoint URL appear in messages",
             "trm/storage/config.py", 'text = _BARE_USERINFO.sub("***@", _USERINFO.sub(r"\\1***@", str(text)))',
             "text = str(text)",
             ("tests/test_storage.py::test_url_credentials_never_in_messages",
              "tests/test_launch_client.py::test_url_credentials_never_appear_in_render_output_or_messages")),
    Mutation("secret-env", "pipeline steps no longer get the S3 keys from the Kubernetes secret",
             "pipeline/pods.py", "    if secrets:\n        kubernetes.use_secret_as_env(task, secret_name=settings.S3",
             "    if False:\n        kubernetes.use_secret_as_env(task, secret_name=settings.S3",
             ("tests/test_pipeline.py::test_parses_into_pipeline_spec_protos",)),
    # -- parity -------------------------------------------------------------------------------------------------
    Mutation("parity-rmsnorm", "RMS norm divides by one more element than it has",
             "trm/model/layers.py", "scale.square() / x.shape[-1] + eps", "scale.square() / (x.shape[-1] + 1) + eps",
             ("tests/test_model_parity.py::test_eval_parity_every_act_step",)),
    Mutation("parity-exploration", "ACT exploration draws its minimum halting step from 1 instead of 2",
             "trm/model/trm.py", "torch.randint(2, max_steps + 1,", "torch.randint(1, max_steps + 1,",
             ("tests/test_model_parity.py::test_training_mode_matches_reference_fixture",)),
    Mutation("deaugment-rotations", "de-augmentation applies a rotation again instead of inverting it",
             "trm/data/augment.py", "INVERSE_TRANSFORM = (0, 3, 2, 1, 4, 5, 6, 7)",
             "INVERSE_TRANSFORM = (0, 1, 2, 3, 4, 5, 6, 7)",
             ("tests/test_deaugment.py::test_one_prediction_in_the_augmented_frame_is_the_answer",)),
    Mutation("eval-ranks", "multi-rank evaluation keeps rank 0's predictions only",
             "trm/evaluation/evaluate.py", "    if world == 1:\n        return [part]",
             "    if True:\n        return [part]",
             ("tests/test_evaluate.py::test_torchrun_two_ranks_match_one_process",)),
    Mutation("vote-ties", "equal vote counts are broken by the lowest mean halting logit instead of the highest",
             "trm/evaluation/rules.py", "rank = np.lexsort((-mean, -count, slot))",
             "rank = np.lexsort((mean, -count, slot))",
             ("tests/test_vote_rules.py::test_voter_matches_a_plain_implementation_of_the_spec",)),
    Mutation("reader-verify", "readers take a file replaced after its folder's `_COMPLETE` was written",
             "trm/storage/store.py", "self.download_file(join(uri, rel), target, size=size, etag=etag)",
             "self.download_file(join(uri, rel), target)",
             ("tests/test_faults.py::test_failed_or_concurrent_reupload_is_never_read_as_a_mix",)),
    Mutation("merged-identifiers", "a checkpoint names only the first data path's puzzle identifiers",
             "trm/train.py", "self._names = load_identifiers(self.cfg.data_paths)",
             "self._names = load_identifiers(self.cfg.data_paths[:1])",
             ("tests/test_posttrain.py::test_checkpoint_names_every_paths_identifiers",)),
    # -- Kubernetes launcher ------------------------------------------------------------------------------------
    Mutation("adopt-409", "a retried launcher submits a second job when its run's job already exists",
             "trm/launch/client.py", "same_run = bool(run_id) and labels.get(RUN_ID_LABEL) == run_id",
             "same_run = False",
             ("tests/test_launch_client.py::test_409_adopts_a_running_job_of_the_same_run",)),
    Mutation("k8s-retry", "a 5xx or 429 from the API server ends the launcher instead of being retried",
             "trm/launch/client.py", "return not err.status or err.status == 429 or err.status >= 500", "return False",
             ("tests/test_launch_client.py::test_5xx_and_429_are_retried",)),
    Mutation("whole-lines", "the log follower writes a line cut by a dropped stream in two pieces",
             "trm/launch/client.py", 'end = data.rfind(b"\\n") + 1', "end = len(data)",
             ("tests/test_launch_client.py::test_the_log_follower_writes_whole_lines_only",)),
    # -- the test suite itself ----------------------------------------------------------------------------------
    Mutation("ci-skips", "under CI a missing ../shared is skipped instead of failing the run",
             "tests/conftest.py", ("    if in_ci():\n        pytest.fail", "if not (report.skipped and in_ci()"),
             ("    if False:\n        pytest.fail", "if not (report.skipped and False"),
             ("tests/test_ci_mode.py",)),
)


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


def scratch_copy(into: Path, files: list[str]) -> Path:
    for name in files:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    if (ROOT / ".venv").exists():
        (into / ".venv").symlink_to(ROOT / ".venv")
    return into


def run_tests(where: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """(passed, tail of the output) of pytest over `tests` in `where` (its modules shadow the checkout's)."""
    env = {**os.environ, "PYTHONPATH": str(where), "PYTHONDONTWRITEBYTECODE": "1"}
    env.setdefault("TRM_SHARED_DIR", str(ROOT.parent / "shared"))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=where, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    return done.returncode == 0, (done.stdout + done.stderr)[-1500:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [known[n] for n in args.names] or list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.name:20} {m.path}: {m.claim}\n{'':20} guarded by {', '.join(m.tests)}")
        return 0
    files = tracked_files()
    rows, failures = [], 0
    with tempfile.TemporaryDirectory(prefix="trm-mutations-") as tmp:
        base = scratch_copy(Path(tmp) / "base", files)
        every = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        ok, tail = run_tests(base, every, args.timeout * 2)
        if not ok:
            print(f"the guarding tests fail without any mutation; fix them first:\n{tail}", file=sys.stderr)
            return 2
        print(f"unmutated: {len(every)} guarding test(s) pass", flush=True)
        for m in chosen:
            source = (ROOT / m.path).read_text()
            if any(source.count(old) != 1 for old, _ in m.edits()):
                result, failures = "STALE (snippet not found once)", failures + 1
            else:
                scratch = scratch_copy(Path(tmp) / m.name, files)
                for old, new in m.edits():
                    source = source.replace(old, new)
                (scratch / m.path).write_text(source)
                start = time.monotonic()
                passed, tail = run_tests(scratch, m.tests, args.timeout)
                took = time.monotonic() - start
                shutil.rmtree(scratch, ignore_errors=True)
                if passed:
                    result, failures = "NOT CAUGHT: the tests still pass", failures + 1
                else:
                    result = f"caught ({took:.0f} s)" + (" by a timeout" if tail.startswith("timed out") else "")
            print(f"{m.name:20} {result}", flush=True)
            tests = ", ".join(f"`{t.split('::')[-1]}`" for t in m.tests)
            rows.append(f"| {m.claim} | `{m.name}` in `{m.path}` | {tests} | {result} |")
    print("\n| what breaks | mutation | guarding test(s) | result |\n|---|---|---|---|")
    print("\n".join(rows))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

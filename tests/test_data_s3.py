"""S3 source and destination of the dataset builder, against a real `weed mini` server on loopback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from trm.data.build import BuildConfig, build_dataset, main
from trm.data.loader import TrainLoader, load_metadata
from trm.data.sources import load_subset

from test_data_build import write_subset

pytestmark = pytest.mark.s3


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "_COMPLETE"}


def test_s3_source_and_destination(arc_dir, tmp_path, s3_env, monkeypatch):
    from trm.storage import S3Store, localize

    monkeypatch.setenv("TRM_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    src.mkdir()
    prefix = write_subset(arc_dir, src, "evaluation2", "ev", n=4)
    write_subset(arc_dir, src, "training2", "tr", n=3)
    write_subset(arc_dir, src, "evaluation2", "hidden", n=2, skip=10, solutions=False)
    store = S3Store.from_env()
    for path in sorted(src.iterdir()):
        store.upload_file(path, f"s3://trm/sources/{path.name}")
    s3_prefix = "s3://trm/sources/arc"

    # the S3 source reads the same tasks as the local files
    for subset in ("ev", "tr", "hidden"):
        local, remote = load_subset(prefix, subset), load_subset(s3_prefix, subset)
        assert list(local) == list(remote)
        assert all(p.output is None for t in remote.values() for p in t.test) == (subset == "hidden")
    with pytest.raises(FileNotFoundError, match="s3://trm/sources/arc_nope_challenges.json"):
        load_subset(s3_prefix, "nope")

    # build from S3 into S3: identical to a local build, complete marker written last
    flags = dict(subsets=["tr", "ev", "hidden"], test_set_name=["ev", "hidden"], num_aug=4, workers=2)
    dest = "s3://trm/runs/t1/dataset"
    assert build_dataset(BuildConfig(s3_prefix, dest, **flags)) == dest
    assert store.exists(f"{dest}/_COMPLETE")
    build_dataset(BuildConfig(prefix, str(tmp_path / "local"), **flags))
    fetched = localize(dest)
    assert _digests(fetched) == _digests(tmp_path / "local")

    # the loaders take the s3:// path directly
    assert load_metadata([dest], "test").total_groups == 6
    batch = next(TrainLoader([dest], 4, seed=0).iterate())[1]
    assert batch["inputs"].shape == (4, 900)

    # the CLI form, and an unknown subset on S3 fails cleanly without writing the destination
    assert main(["--input-file-prefix", s3_prefix, "--output-dir", "s3://trm/runs/t2/dataset", "--subsets", "nope",
                 "--test-set-name", "nope", "--num-aug", "1"]) == 2
    assert not store.exists("s3://trm/runs/t2/dataset/_COMPLETE")

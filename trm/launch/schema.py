"""Check a PyTorchJob against the CRD's openAPIV3Schema, rejecting unknown fields, as an API server would.

    from trm.launch.schema import CrdValidator
    validator = CrdValidator.from_file("../shared/k8s-schemas/kubeflow.org_pytorchjobs.yaml")
    errors = validator.errors(job_dict)      # [] when valid; each names the field path
    validator.check(job_dict)                # ValueError listing every error

    python -m trm.launch.schema CRD.yaml job.yaml      # prints the errors; exit 1 when there are any

The API server prunes fields that a structural schema does not list; for us an unknown field is a bug
(a misspelt key silently dropped), so objects that list `properties` get `additionalProperties: false`
unless they set `x-kubernetes-preserve-unknown-fields`. OpenAPI's `x-kubernetes-int-or-string` and `nullable`
are mapped to JSON Schema. Needs the `jsonschema` package (installed with kubernetes-validate).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml


def strict_schema(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema as JSON Schema that rejects properties it does not list."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()
           if key not in ("description", "x-kubernetes-validations")}
    if "properties" in out and "additionalProperties" not in out \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


class CrdValidator:
    """Validates objects of one version of a CustomResourceDefinition."""

    def __init__(self, crd: Mapping[str, Any], version: str = "v1"):
        from jsonschema import Draft7Validator

        versions = {v["name"]: v for v in crd.get("spec", {}).get("versions", [])}
        if version not in versions:
            raise ValueError(f"CRD {crd.get('metadata', {}).get('name')!r} has no version {version!r}; "
                             f"it has {sorted(versions)}")
        self.kind = crd["spec"]["names"]["kind"]
        self.api_version = f"{crd['spec']['group']}/{version}"
        self.schema = strict_schema(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"]))
        self._validator = Draft7Validator(self.schema)

    @classmethod
    def from_file(cls, path: str | Path, version: str = "v1") -> "CrdValidator":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CRD file not found: {path}")
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
        if len(crds) != 1:
            raise ValueError(f"{path}: expected one CustomResourceDefinition, found {len(crds)}")
        return cls(crds[0], version)

    def errors(self, obj: Mapping[str, Any]) -> list[str]:
        found = []
        if obj.get("apiVersion") != self.api_version or obj.get("kind") != self.kind:
            found.append(f"apiVersion/kind: expected {self.api_version} {self.kind}, "
                         f"got {obj.get('apiVersion')} {obj.get('kind')}")
        for err in sorted(self._validator.iter_errors(dict(obj)), key=lambda e: list(map(str, e.absolute_path))):
            path = ".".join(str(p) for p in err.absolute_path) or "<root>"
            found.append(f"{path}: {err.message}")
        return found

    def check(self, obj: Mapping[str, Any]) -> None:
        found = self.errors(obj)
        if found:
            raise ValueError(f"{self.kind} {obj.get('metadata', {}).get('name')!r} fails the CRD schema:\n  "
                             + "\n  ".join(found))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m trm.launch.schema CRD.yaml OBJECT.yaml", file=sys.stderr)
        return 2
    validator = CrdValidator.from_file(argv[0])
    status = 0
    for doc in yaml.safe_load_all(Path(argv[1]).read_text()):
        if not doc:
            continue
        for line in validator.errors(doc):
            print(f"{doc.get('metadata', {}).get('name')}: {line}")
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Pipeline parameters from the command line: `key=value` words checked against the pipeline's signature.

    from pipeline.params import parse_params, defaults
    parse_params(["num_aug=8", "subsets=[training2,evaluation2]", "ema=false"])
    # {"num_aug": 8, "subsets": ["training2", "evaluation2"], "ema": False}
    parse_params(["checkpoint=s3://trm/runs/seed1", "chunk_size=40"], pipeline="posttrain")

Pipelines (`pipeline=`): `pretrain` (pipeline/dag.py, the default) and `posttrain` (pipeline/posttrain.py).

Values: JSON (`[1,2]`, `{"a": "b"}`, `true`) or, for lists, `[a,b]` without quotes; the type must match the
parameter's (int, float, bool, str, list, dict). An unknown name is an error with the closest names.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

# KFP parameter type names (component spec) -> python types
_TYPES = {"String": str, "Integer": int, "Float": float, "Boolean": bool, "List": list, "Dict": dict}


PIPELINES = ("pretrain", "posttrain")


def pipeline_function(pipeline: str = "pretrain"):
    """The @dsl.pipeline function of `pipeline` (pretrain | posttrain)."""
    if pipeline == "pretrain":
        from pipeline.dag import trm_pipeline

        return trm_pipeline
    if pipeline == "posttrain":
        from pipeline.posttrain import posttrain_pipeline

        return posttrain_pipeline
    raise ValueError(f"unknown pipeline {pipeline!r}; known: {', '.join(PIPELINES)}")


def signature(pipeline: str = "pretrain") -> dict[str, tuple[type, Any]]:
    """name -> (python type, default) of every parameter of `pipeline`."""
    out = {}
    for name, spec in pipeline_function(pipeline).component_spec.inputs.items():
        out[name] = (_TYPES.get(spec.type, str), spec.default)
    return out


def defaults(pipeline: str = "pretrain") -> dict[str, Any]:
    return {name: default for name, (_, default) in signature(pipeline).items()}


def coerce(name: str, kind: type, text: str) -> Any:
    """`text` as a value of `kind`; ValueError naming the parameter."""
    text = text.strip()
    if kind is str:
        return text
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{name}: expected true/false, got {text!r}")
    if kind is list and text.startswith("[") and not text.startswith('["') and text != "[]":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return [item.strip() for item in text[1:-1].split(",") if item.strip()]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}")
    return value


def parse_params(words: list[str], pipeline: str = "pretrain") -> dict[str, Any]:
    known = signature(pipeline)
    out: dict[str, Any] = {}
    for word in words:
        if "=" not in word:
            raise ValueError(f"--param {word!r}: expected key=value")
        name, text = word.split("=", 1)
        name = name.strip()
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown pipeline parameter {name!r}{hint}")
        out[name] = coerce(name, known[name][0], text)
    return out

"""Hypothesis strategies for JSON bodies from the (small) JSON-schema subset serve/openapi_shapes.py
uses: type (or a list of types), enum, anyOf, properties/required, additionalProperties, items,
minItems/maxItems, minimum/maximum/exclusiveMinimum, minLength/maxLength. `wrong` is the chance
that a value ignores its schema (any JSON instead), so bad bodies are fuzzed too."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4), max_leaves=10)


def request_bodies(schema: dict[str, Any], *, wrong: float = 0.1) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects shaped by an object `schema`; each field ignores its schema with chance `wrong`."""
    return _object(schema, wrong)


def bodies(schema: dict[str, Any], *, wrong: float = 0.1) -> st.SearchStrategy[Any]:
    """Values that match `schema`, or (each with chance `wrong`) any JSON value in their place."""
    right = _matching(schema, wrong)
    if wrong <= 0:
        return right
    return st.floats(0, 1).flatmap(lambda p: JSON if p < wrong else right)


def _matching(schema: dict[str, Any], wrong: float) -> st.SearchStrategy[Any]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([bodies(s, wrong=wrong) for s in schema["anyOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([_matching({**schema, "type": k}, wrong) for k in kind])
    if kind == "object" or "properties" in schema:
        return _object(schema, wrong)
    if kind == "array":
        return st.lists(bodies(schema.get("items", {}), wrong=wrong), min_size=schema.get("minItems", 0),
                        max_size=schema.get("maxItems", max(schema.get("minItems", 0), 3)))
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 30), 30))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum", 2**31))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(low, schema.get("maximum", 1e6), allow_nan=False,
                         exclude_min="exclusiveMinimum" in schema and low is not None)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return JSON


def _object(schema: dict[str, Any], wrong: float) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    fixed = {name: bodies(properties[name], wrong=wrong) for name in required if name in properties}
    optional = {name: bodies(sub, wrong=wrong) for name, sub in properties.items() if name not in required}
    base = st.fixed_dictionaries(fixed, optional=optional)
    if schema.get("additionalProperties") is True:
        extra = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in properties), JSON,
                                max_size=2)
        return st.tuples(base, extra).map(lambda parts: {**parts[1], **parts[0]})
    return base

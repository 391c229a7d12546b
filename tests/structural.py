"""What a real kube-apiserver refuses in a CustomResourceDefinition that offline validation passes.

kubernetes-validate checks a CRD against the OpenAPI schema of CustomResourceDefinition only. The
apiserver also requires each version's `openAPIV3Schema` to be *structural* and checks it with
its own rules (apiextensions-apiserver: `ValidateCustomResourceDefinitionOpenAPISchema`,
`specStandardValidatorV3.validate` and `structuralschema.ValidateStructural`). `problems()`
walks a CRD for those rules and returns one line per break, path first, in the apiserver's words.

`validator()` evaluates a Store (or any custom resource) the way the apiserver does after the
CRD is accepted: the schema's own checks (jsonschema), unknown fields refused as kubectl's
default strict field validation refuses them (the apiserver prunes them otherwise: they never
reach the object), and each `x-kubernetes-validations` CEL rule with its message.
"""

from __future__ import annotations

import copy
from typing import Iterator

import jsonschema

TYPES = {"array", "boolean", "integer", "number", "object", "string"}
FORBIDDEN = {
    "$ref": "$ref is not supported",
    "definitions": "definitions is not supported",
    "patternProperties": "patternProperties is not supported",
    "dependencies": "dependencies is not supported",
    "additionalItems": "additionalItems is not supported",
    "id": "id is not supported",
    "$schema": "$schema is not supported",
}
# Value validations (inside allOf/anyOf/oneOf/not) may not carry these: the structure is outside.
NOT_IN_VALUE_VALIDATION = {"type", "description", "default", "additionalProperties", "nullable", "title",
                           "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                           "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
                           "x-kubernetes-map-type", "x-kubernetes-validations"}
# With the status or scale subresource on, the root schema may use only these.
ROOT_ALLOWED = {"description", "type", "format", "title", "maximum", "exclusiveMaximum", "minimum",
                "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
                "multipleOf", "required", "items", "properties", "externalDocs", "example",
                "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations"}


def problems(crd: dict) -> list[str]:
    """Every structural-schema break in the CRD's versions; empty when the apiserver accepts it."""
    found: list[str] = []
    for i, version in enumerate(crd.get("spec", {}).get("versions", [])):
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        where = f"spec.versions[{i}].schema.openAPIV3Schema"
        if schema is None:
            found.append(f"{where}: Required value: schemas are required")
            continue
        if version.get("subresources"):
            for key in sorted(set(schema) - ROOT_ALLOWED):
                found.append(f"{where}.{key}: Forbidden: only {sorted(ROOT_ALLOWED)} may be used at the root "
                             "of the schema if the status or scale subresource is enabled")
        if schema.get("type") != "object":
            found.append(f"{where}.type: Invalid value: {schema.get('type')!r}: must be object at the root")
        metadata = (schema.get("properties") or {}).get("metadata")
        if metadata is not None and (set(metadata) - {"type", "properties"} or
                                     set(metadata.get("properties") or {}) - {"name", "generateName"}):
            found.append(f"{where}.properties.metadata: Forbidden: must not specify anything other than name "
                         "and generateName, but metadata is implicitly specified")
        found.extend(_walk(schema, where, value_validation=False, root=True))
    return found


def _walk(node, path: str, value_validation: bool, root: bool = False) -> Iterator[str]:
    if not isinstance(node, dict):
        yield f"{path}: Invalid value: a schema must be an object, not {type(node).__name__}"
        return
    for key, why in FORBIDDEN.items():
        if key in node:
            yield f"{path}.{key}: Forbidden: {why}"
    if node.get("uniqueItems") is True:
        yield f"{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity " \
              "becomes quadratic"
    additional = node.get("additionalProperties")
    if node.get("properties") and additional is not None and additional is not True:
        yield f"{path}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        yield f"{path}.x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined"
    kind = node.get("type")
    if value_validation:
        for key in sorted(NOT_IN_VALUE_VALIDATION & set(node)):
            yield f"{path}.{key}: Forbidden: must be empty to be structural (inside allOf/anyOf/oneOf/not)"
    else:
        if kind is None and not node.get("x-kubernetes-int-or-string"):
            yield f"{path}.type: Required value: must not be empty for specified fields"
        elif kind == "null":
            yield f"{path}.type: Forbidden: type cannot be set to null, use nullable as an alternative"
        elif kind is not None and kind not in TYPES:
            yield f"{path}.type: Unsupported value: {kind!r}: supported values: {sorted(TYPES)}"
        if kind == "array" and "items" not in node:
            yield f"{path}.items: Required value: must be specified"
        if ("properties" in node or isinstance(additional, dict)) and kind != "object":
            yield f"{path}.properties: Forbidden: must only be used with type object"
        if "items" in node and kind != "array":
            yield f"{path}.items: Forbidden: must only be used with type array"
        if node.get("x-kubernetes-list-type") == "map" and not node.get("x-kubernetes-list-map-keys"):
            yield f"{path}.x-kubernetes-list-map-keys: Required value: must not be empty if x-kubernetes-list-type is map"
    items = node.get("items")
    if isinstance(items, list):
        yield f"{path}.items: Forbidden: items must be a schema object and not an array"
    elif items is not None:
        yield from _walk(items, f"{path}.items", value_validation)
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.properties[{name}]", value_validation)
    if isinstance(additional, dict):
        yield from _walk(additional, f"{path}.additionalProperties", value_validation)
    for combinator in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(combinator) or []):
            yield from _walk(sub, f"{path}.{combinator}[{i}]", value_validation=True)
    if "not" in node:
        yield from _walk(node["not"], f"{path}.not", value_validation=True)
    if "default" in node and not value_validation:
        if root:
            yield f"{path}.default: Forbidden: must not be set at the root"
        else:
            try:
                jsonschema.validate(node["default"], _without_defaults(node))
            except jsonschema.ValidationError as err:
                yield f"{path}.default: Invalid value: {node['default']!r}: {err.message}"
    for i, value in enumerate(node.get("enum") or []):
        if not value_validation and kind in TYPES and not _is(value, kind):
            yield f"{path}.enum[{i}]: Invalid value: {value!r}: must be of type {kind}"
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        text, message = (rule.get("rule") or "").strip(), rule.get("message")
        if not text:
            yield f"{path}.x-kubernetes-validations[{i}].rule: Required value: rule is not specified"
        elif message is not None and ("\n" in message.strip() or not message.strip()):
            yield f"{path}.x-kubernetes-validations[{i}].message: Invalid value: must be one non-empty line"
        elif "\n" in text and not message:
            yield f"{path}.x-kubernetes-validations[{i}].message: Required value: message must be specified if " \
                  "rule contains line breaks"
        else:
            try:
                _compile(text)
            except Exception as err:  # noqa: BLE001 - any compile error is the finding
                yield f"{path}.x-kubernetes-validations[{i}].rule: Invalid value: {text!r}: compilation failed: {err}"


def _is(value, kind: str) -> bool:
    return {"string": isinstance(value, str), "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "object": isinstance(value, dict), "array": isinstance(value, list)}[kind]


def _without_defaults(node: dict) -> dict:
    return {k: v for k, v in node.items() if k not in ("default", "x-kubernetes-validations")}


# ------------------------------------------------------------------ evaluating custom resources

def strict(schema: dict) -> dict:
    """The schema as kubectl's strict field validation applies it: unknown fields are errors.

    (The apiserver prunes unknown fields from structural objects; with `fieldValidation=Strict`,
    kubectl's default since 1.27, it refuses the request naming the field instead.)"""
    out = copy.deepcopy(schema)

    def close(node: dict) -> None:
        if node.get("type") == "object" and "properties" in node and \
                not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for sub in (node.get("properties") or {}).values():
            close(sub)
        if isinstance(node.get("items"), dict):
            close(node["items"])
        if isinstance(node.get("additionalProperties"), dict):
            close(node["additionalProperties"])

    close(out)
    # apiVersion, kind and metadata are implicit at the root of every custom resource.
    out.setdefault("properties", {})
    for name in ("apiVersion", "kind"):
        out["properties"].setdefault(name, {"type": "string"})
    out["properties"].setdefault("metadata", {"type": "object"})
    return out


def validate(obj: dict, schema: dict) -> dict:
    """Raise jsonschema.ValidationError as the apiserver would refuse `obj` (see the module doc);
    return the object as stored, with the schema's defaults applied (before validation, as there)."""
    obj = defaulted(obj, schema)
    jsonschema.validate(obj, strict(schema))
    for value, rule in _rules(schema, obj):
        if not _evaluate(rule["rule"], value):
            raise jsonschema.ValidationError(rule.get("message") or f"failed rule: {rule['rule']}")
    return obj


def defaulted(value, node: dict):
    """`value` with the `default` of each absent property of each present object filled in."""
    if isinstance(value, dict) and node.get("properties"):
        value = dict(value)
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = defaulted(value[name], sub)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [defaulted(item, node["items"]) for item in value]
    return value


def _rules(node: dict, value):
    """(value, rule) for each CEL rule whose field is present in `value`."""
    for rule in node.get("x-kubernetes-validations") or []:
        yield value, rule
    if isinstance(value, dict):
        for name, sub in (node.get("properties") or {}).items():
            if name in value:
                yield from _rules(sub, value[name])
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            yield from _rules(node["items"], item)


def _compile(text: str):
    import celpy

    return celpy.Environment().compile(text)


def _evaluate(text: str, value) -> bool:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(text))
    result = program.evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, Exception):
        raise result
    return bool(result)

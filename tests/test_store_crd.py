"""The Store CRD: a CustomResourceDefinition a real apiserver accepts (structural), whose schema
accepts good specs and rejects bad ones as the apiserver would (schema, strict fields, CEL rules)."""

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import structural
from runsync_operator.stores import StoreSpec

CRDS = sorted((Path(__file__).parent.parent / "charts/runsync/crds").glob("*.yaml"))
CRD = yaml.safe_load((Path(__file__).parent.parent / "charts/runsync/crds/stores.runsync.dev.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_crd_itself_is_valid():
    for version in ("1.29", "1.33"):
        kubernetes_validate.validate(CRD, version, strict=True)


@pytest.mark.parametrize("path", CRDS, ids=[p.name for p in CRDS])
def test_every_crd_in_the_chart_is_structural(path):
    """kubernetes-validate passes CRDs that the apiserver refuses: walk them for its rules."""
    for crd in yaml.safe_load_all(path.read_text()):
        assert structural.problems(crd) == [], f"{path.name} would be refused by the apiserver"


def _crd(schema: dict) -> dict:
    return {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
        "type": "object", "properties": {"spec": schema}}}}]}}


REFUSED = [
    ({"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}},
     "additionalProperties and properties are mutual exclusive"),
    ({"type": "object", "properties": {"a": {"description": "no type"}}}, "properties[a].type: Required value"),
    ({"type": "object", "properties": {"a": {"$ref": "#/x", "type": "string"}}}, "$ref is not supported"),
    ({"type": "object", "definitions": {"x": {"type": "string"}}}, "definitions is not supported"),
    ({"type": "object", "patternProperties": {"^a": {"type": "string"}}}, "patternProperties is not supported"),
    ({"type": "array", "items": [{"type": "string"}]}, "items must be a schema object and not an array"),
    ({"type": "array", "uniqueItems": True, "items": {"type": "string"}}, "uniqueItems cannot be set to true"),
    ({"type": "array"}, "items: Required value"),
    ({"type": "string", "default": 3}, "default: Invalid value"),
    ({"type": "string", "enum": ["a", 1]}, "enum[1]: Invalid value"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "anyOf": [{"type": "object"}]},
     "anyOf[0].type: Forbidden"),
    ({"type": "object", "x-kubernetes-preserve-unknown-fields": False}, "must be true or undefined"),
    ({"type": "object", "x-kubernetes-validations": [{"rule": "self.a =="}]}, "compilation failed"),
]


@pytest.mark.parametrize("schema,message", REFUSED, ids=[m for _, m in REFUSED])
def test_the_walk_finds_what_the_apiserver_refuses(schema, message):
    found = structural.problems(_crd(schema))
    assert any(message in p for p in found), found


GOOD = [
    {"bucket": "ml-runs"},
    {"bucket": "ml-runs", "prefix": "team-a/runsync", "region": "eu-west-1",
     "credentialsSecret": {"name": "s3-keys"}},
    {"bucket": "my.bucket-1", "endpoint": "http://minio.storage:9000", "serverSideEncryption": {"type": "aws:kms",
                                                                                               "kmsKeyId": "k"}},
    {"bucket": "ml-runs", "retention": {"days": 30}},
    {"bucket": "ml-runs", "retention": {"keepManifests": 1, "minAge": "90s"}},
    {"bucket": "ml-runs", "retention": {"keepManifests": 5, "minAge": "1.5h", "days": 90, "schedule": "0 * * * *"}},
    {"bucket": "ml-runs", "retention": {}},
    {"bucket": "ml-runs", "serverSideEncryption": {"type": "AES256"},
     "credentialsSecret": {"name": "s3-keys", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret.key"}},
]
BAD = [
    ({}, "'bucket' is a required property"),
    ({"bucket": "ML_Runs"}, "does not match"),
    ({"bucket": "ml-runs", "endpoint": "minio:9000"}, "does not match"),
    ({"bucket": "ml-runs", "credentialsSecret": {}}, "'name' is a required property"),
    ({"bucket": "ml-runs", "serverSideEncryption": {"type": "rot13"}}, "is not one of"),
    ({"bucket": "ml-runs", "bukket": "x"}, "Additional properties are not allowed"),
    ({"bucket": "ml-runs", "retention": {"days": 0}}, "less than the minimum"),
    ({"bucket": "ml-runs", "retention": {"keepManifests": 0}}, "less than the minimum"),
    ({"bucket": "ml-runs", "retention": {"minAge": "1w"}}, "does not match"),
    ({"bucket": "ml-runs", "retention": {"minAge": 3600}}, "is not of type 'string'"),
    ({"bucket": "ml-runs", "retention": {"schedule": ""}}, "should be non-empty"),
    ({"bucket": "ml-runs", "retention": {"keep": 3}}, "Additional properties are not allowed"),
    ({"bucket": "ml-runs", "serverSideEncryption": {"type": "AES256", "kmsKeyId": "k"}},
     "kmsKeyId is only used with type aws:kms"),
    ({"bucket": "ml-runs", "serverSideEncryption": {"kmsKeyId": "k"}}, "'type' is a required property"),
    ({"bucket": "ml-runs", "credentialsSecret": {"name": "k", "accessKeyIdKey": "K", "secretAccessKeyKey": "K"}},
     "accessKeyIdKey and secretAccessKeyKey must name two different keys"),
    ({"bucket": "ml-runs", "credentialsSecret": {"name": "k", "accessKeyIdKey": "a key"}}, "does not match"),
    ({"bucket": "ml-runs", "region": ""}, "does not match"),
]


@pytest.mark.parametrize("spec", GOOD)
def test_good_specs(spec):
    structural.validate({"spec": spec}, SCHEMA)
    assert StoreSpec.parse(spec).bucket == spec["bucket"]


@pytest.mark.parametrize("spec,message", BAD)
def test_bad_specs_are_rejected(spec, message):
    with pytest.raises(jsonschema.ValidationError, match=message):
        structural.validate({"spec": spec}, SCHEMA)

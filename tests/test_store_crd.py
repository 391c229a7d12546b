"""The Store CRD: a valid CustomResourceDefinition whose schema accepts good specs and rejects bad ones."""

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from runsync_operator.stores import StoreSpec

CRD = yaml.safe_load((Path(__file__).parent.parent / "charts/runsync/crds/stores.runsync.dev.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_crd_itself_is_valid():
    for version in ("1.29", "1.33"):
        kubernetes_validate.validate(CRD, version, strict=True)


GOOD = [
    {"bucket": "ml-runs"},
    {"bucket": "ml-runs", "prefix": "team-a/runsync", "region": "eu-west-1",
     "credentialsSecret": {"name": "s3-keys"}},
    {"bucket": "my.bucket-1", "endpoint": "http://minio.storage:9000", "serverSideEncryption": {"type": "aws:kms",
                                                                                               "kmsKeyId": "k"}},
    {"bucket": "ml-runs", "retention": {"days": 30}},
]
BAD = [
    ({}, "'bucket' is a required property"),
    ({"bucket": "ML_Runs"}, "does not match"),
    ({"bucket": "ml-runs", "endpoint": "minio:9000"}, "does not match"),
    ({"bucket": "ml-runs", "credentialsSecret": {}}, "'name' is a required property"),
    ({"bucket": "ml-runs", "serverSideEncryption": {"type": "rot13"}}, "is not one of"),
    ({"bucket": "ml-runs", "bukket": "x"}, "Additional properties are not allowed"),
    ({"bucket": "ml-runs", "retention": {"days": 0}}, "less than the minimum"),
]


@pytest.mark.parametrize("spec", GOOD)
def test_good_specs(spec):
    jsonschema.validate({"spec": spec}, SCHEMA)
    assert StoreSpec.parse(spec).bucket == spec["bucket"]


@pytest.mark.parametrize("spec,message", BAD)
def test_bad_specs_are_rejected(spec, message):
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate({"spec": spec}, SCHEMA)

"""What botocore works out at each process's first client, worked out at install time (botodata.py,
issue 17): S3's model without its documentation and the list of botocore's services, the same
as botocore's own, read only when built from the installed botocore, the user's AWS_DATA_PATH
still first."""

from __future__ import annotations

import json
import botocore
import botocore.loaders
import botocore.model
import botocore.session
import pytest

from runsync import botodata, keys, transfer

VERSION = botocore.loaders.Loader().determine_latest_version("s3", "service-2")
MODEL = f"s3/{VERSION}/service-2"


def botocores_own() -> dict:
    data, path = botocore.loaders.Loader(include_default_search_paths=False,
                                         extra_search_paths=[botocore.loaders.Loader.BUILTIN_DATA_PATH]).load_data_with_path(MODEL)
    return json.loads(json.dumps(data))


def blank_docs(node):
    if isinstance(node, dict):
        return {k: "" if k == "documentation" and isinstance(v, str) else blank_docs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [blank_docs(v) for v in node]
    return node


def session_for(target, data_path: str | None = None):
    session = botocore.session.get_session()
    if data_path is not None:
        session.set_config_variable("data_path", data_path)
    return session, botodata.use(session, target)


def model_path(session) -> str:
    return session.get_component("data_loader").load_data_with_path(MODEL)[1]


def test_the_model_is_botocores_own_with_its_documentation_blank(tmp_path):
    target = botodata.build(tmp_path / "data")
    lean = json.loads((target / MODEL).with_suffix(".json").read_text())
    full = botocores_own()
    assert lean == blank_docs(full)
    assert len(json.dumps(lean)) < len(json.dumps(full)) / 3  # the point of it
    # What botocore reads off the model at runtime, documentation fields included.
    lean_model, full_model = botocore.model.ServiceModel(lean, "s3"), botocore.model.ServiceModel(full, "s3")
    assert lean_model.operation_names == full_model.operation_names
    assert [(p.name, p.type) for p in lean_model.client_context_parameters] == \
        [(p.name, p.type) for p in full_model.client_context_parameters]


def test_a_session_reads_it_only_when_built_from_the_installed_botocore(tmp_path):
    target = botodata.build(tmp_path / "data")
    session, used = session_for(target)
    assert used and model_path(session).startswith(str(target))
    assert session.create_client("s3", region_name="us-east-1").can_paginate("list_objects_v2")

    (target / botodata.VERSION_FILE).write_text("0.0.1")  # built by another botocore
    (target / MODEL).with_suffix(".json").write_text("{}")  # and unusable: it must not be read
    (target / botodata.LISTED_FILE).write_text("{}")
    session, used = session_for(target)
    assert not used and type(session.get_component("data_loader")) is botocore.loaders.Loader
    assert model_path(session).startswith(botocore.loaders.Loader.BUILTIN_DATA_PATH)
    assert hasattr(session.create_client("s3", region_name="us-east-1"), "get_object")


def test_it_lists_the_services_botocore_lists(tmp_path):
    session, used = session_for(botodata.build(tmp_path / "data"))
    own = botocore.session.get_session()
    assert used and session.get_available_services() == own.get_available_services()
    for kind in (*botodata.LISTED_KINDS, "examples-1"):  # the last one is not listed at build time
        assert session.get_component("data_loader").list_available_services(kind) == \
            own.get_component("data_loader").list_available_services(kind), kind


def test_the_users_data_path_still_comes_first(tmp_path):
    target = botodata.build(tmp_path / "data")
    user = tmp_path / "user"
    (user / MODEL).parent.mkdir(parents=True)
    (user / MODEL).with_suffix(".json").write_text(json.dumps(botocores_own()))
    (user / "my-service" / "2020-01-01").mkdir(parents=True)  # a service only the user's path has
    (user / "my-service" / "2020-01-01" / "service-2.json").write_text("{}")
    session, used = session_for(target, data_path=str(user))
    assert used and model_path(session).startswith(str(user))
    assert "my-service" in session.get_available_services() and "s3" in session.get_available_services()


@pytest.mark.s3
def test_setup_built_it_for_the_installed_botocore_and_clients_use_it(s3_env, bucket):
    assert botodata.current(), f"run scripts/setup: {botodata.DIR} holds no model of botocore {botocore.__version__}"
    s3 = transfer.client()
    assert s3.meta.service_model.operation_model("GetObject").documentation == ""  # the lean model
    transfer.check_store(s3, keys.StoreURL.parse(f"s3://{bucket}/runs"))
    s3.put_object(Bucket=bucket, Key="x", Body=b"1")
    assert s3.get_object(Bucket=bucket, Key="x")["Body"].read() == b"1"


def test_build_refuses_a_model_that_is_not_botocores_own(tmp_path, monkeypatch):
    user = tmp_path / "models"
    (user / "s3" / VERSION).mkdir(parents=True)
    (user / MODEL).with_suffix(".json").write_text(json.dumps(botocores_own()))
    monkeypatch.setattr(botocore.loaders.Loader, "CUSTOMER_DATA_PATH", str(user))  # as ~/.aws/models
    with pytest.raises(SystemExit, match="not from botocore's own data"):
        botodata.build(tmp_path / "data")
    assert not (tmp_path / "data").exists()

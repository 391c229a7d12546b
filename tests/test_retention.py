"""retention: which keys of a replica go and why, as a table (pure: no store, no clock)."""

from __future__ import annotations

import pytest

from runsync import retention
from runsync.errors import InputError

NOW = 1_000_000.0
HOUR = 3600.0
P = "r/0/"


def obj(key: str, age: float, size: int = 10) -> retention.Obj:
    return retention.Obj(P + key, size, NOW - age)


def version(seq: int, *files: str, valid: bool = True) -> retention.Version:
    return retention.Version(seq, f"{P}manifests/{seq:012d}.json", valid, frozenset(P + "files/" + f for f in files))


def replica(objects, versions, held=False, unreadable=()) -> retention.Replica:
    return retention.Replica("0", P + "files/", P + "manifests/", tuple(objects), tuple(versions),
                             tuple(unreadable), held)


def m(seq: int, age: float) -> retention.Obj:
    return obj(f"manifests/{seq:012d}.json", age)


OLD = 10 * HOUR
CASES = [
    pytest.param(
        # three manifests, keep 2: manifest 1 goes, and the version of a.pt only it named
        replica([m(1, OLD), m(2, OLD), m(3, OLD), obj("files/a.pt~1", OLD), obj("files/a.pt~2", OLD),
                 obj("files/a.pt~3", OLD), obj("files/cfg~1", OLD), obj("lease.json", OLD)],
                [version(1, "a.pt~1", "cfg~1"), version(2, "a.pt~2", "cfg~1"), version(3, "a.pt~3", "cfg~1")]),
        retention.Policy(keep=2, min_age=HOUR),
        {"manifests/000000000001.json": "older than the newest 2", "files/a.pt~1": "only by dropped manifests 1"},
        id="keep-newest-n"),
    pytest.param(
        # manifest 2 was superseded (by 3) only 30 minutes ago: a restore may still be reading it
        replica([m(1, OLD), m(2, OLD), m(3, HOUR / 2), obj("files/a~1", OLD), obj("files/a~2", OLD)],
                [version(1, "a~1"), version(2, "a~2"), version(3, "a~2")]),
        retention.Policy(keep=1, min_age=HOUR),
        {"manifests/000000000001.json": "older than the newest 1", "files/a~1": "only by dropped manifests 1"},
        id="superseded-recently-stays"),
    pytest.param(
        # an object no manifest names: old goes, young stays (an upload about to be committed)
        replica([m(1, OLD), obj("files/a~1", OLD), obj("files/orphan~1", OLD), obj("files/new~1", 60)],
                [version(1, "a~1")]),
        retention.Policy(keep=1, min_age=HOUR),
        {"files/orphan~1": "named by no manifest"},
        id="orphans-by-age"),
    pytest.param(
        # a live writer's replica: old manifests go; its objects stay, however old: its
        # never-committed uploads, and the versions only dropped manifests named (it may find one
        # stored again, same name and content, and commit it any moment)
        replica([m(1, OLD), m(2, OLD), obj("files/a~1", OLD), obj("files/a~2", OLD), obj("files/shard~1", OLD)],
                [version(1, "a~1"), version(2, "a~2")], held=True),
        retention.Policy(keep=1, min_age=HOUR),
        {"manifests/000000000001.json": "older than the newest 1"},
        id="held-lease-keeps-its-objects"),
    pytest.param(
        # a fenced-off writer's manifest (below the newest valid) is never read: it goes
        replica([m(1, OLD), m(2, OLD), m(3, OLD), obj("files/a~1", OLD), obj("files/z~9", OLD)],
                [version(1, "a~1"), version(2, "z~9", valid=False), version(3, "a~1")]),
        retention.Policy(keep=2, min_age=HOUR),
        {"manifests/000000000002.json": "fenced-off writer", "files/z~9": "only by dropped manifests 2"},
        id="fenced-manifest-goes"),
    pytest.param(
        # above the newest valid manifest: not judged (a takeover in progress)
        replica([m(1, OLD), m(2, OLD), obj("files/a~1", OLD), obj("files/b~1", OLD)],
                [version(1, "a~1"), version(2, "b~1", valid=False)]),
        retention.Policy(keep=1, min_age=0),
        {},
        id="above-latest-valid-stays"),
    pytest.param(
        # a manifest that cannot be read: nothing of the replica is judged
        replica([m(1, OLD), m(2, OLD), obj("files/a~1", OLD), obj("files/orphan", OLD)], [version(2, "a~1")],
                unreadable=("manifest s3://b/r/0/manifests/000000000001.json is unreadable",)),
        retention.Policy(keep=1, min_age=0),
        {},
        id="unreadable-leaves-replica-alone"),
    pytest.param(
        # the same object named by a dropped and a kept manifest stays
        replica([m(1, OLD), m(2, OLD), obj("files/a~1", OLD)], [version(1, "a~1"), version(2, "a~1")]),
        retention.Policy(keep=1, min_age=0),
        {"manifests/000000000001.json": "older than the newest 1"},
        id="shared-object-stays"),
]


@pytest.mark.parametrize("rep, policy, goes", CASES)
def test_what_goes_and_why(rep, policy, goes):
    decision = retention.replica(rep, policy, NOW)
    got = {d.key[len(P):]: d.why for d in decision.drops}
    assert set(got) == set(goes), got
    for key, why in goes.items():
        assert why in got[key], (key, got[key])
    assert decision.bytes == 10 * len(goes)


def test_an_unreadable_manifest_is_named_as_a_problem():
    rep = replica([m(1, OLD)], [], unreadable=("manifest s3://b/r/0/manifests/000000000001.json is unreadable",))
    problems = retention.replica(rep, retention.Policy(), NOW).problems
    assert problems == ["replica 0 left alone: manifest s3://b/r/0/manifests/000000000001.json is unreadable"]


@pytest.mark.parametrize("objects, held, days, expired", [
    pytest.param([obj("x", 3 * 86400), obj("y", 2 * 86400)], False, 1, True, id="idle-longer"),
    pytest.param([obj("x", 3 * 86400), obj("lease.json", 60)], False, 1, False, id="written-recently"),
    pytest.param([obj("x", 3 * 86400)], True, 1, False, id="lease-held"),
    pytest.param([obj("x", 3 * 86400)], False, None, False, id="no-expiry"),
])
def test_whole_run_expiry(objects, held, days, expired):
    policy = retention.Policy(expire_after=days * 86400 if days else None)
    why = retention.expired(objects, held, policy, NOW)
    assert (why is not None) == expired
    if expired:
        assert why.startswith("run idle for 2.0 days")


@pytest.mark.parametrize("text, seconds", [("90", 90), ("30s", 30), ("15m", 900), ("1h", 3600), ("2d", 172800),
                                           ("0", 0), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert retention.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "h", "-1h", "1 hour"])
def test_bad_durations_name_the_value_and_the_form(text):
    with pytest.raises(InputError, match=r"--min-age: .* is not a duration; expected .* 90s, 15m, 1h, 2d"):
        retention.parse_duration(text)


def test_keep_zero_is_refused():
    with pytest.raises(InputError, match="--keep: 0 keeps no manifest"):
        retention.Policy(keep=0)


def test_the_store_crd_the_operator_and_the_cli_share_one_set_of_defaults():
    from pathlib import Path

    import yaml

    from runsync_operator import gcjob

    crd = yaml.safe_load((Path(__file__).parent.parent / "charts/runsync/crds/stores.runsync.dev.yaml").read_text())
    fields = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "retention"]["properties"]
    assert fields["keepManifests"]["default"] == gcjob.Retention.keep == retention.DEFAULT_KEEP
    assert fields["minAge"]["default"] == gcjob.Retention.min_age == retention.DEFAULT_MIN_AGE
    assert fields["schedule"]["default"] == gcjob.Retention.schedule
    assert retention.Policy().min_age == 3600


def test_the_store_crds_retention_defaults_are_runsync_gcs():
    """One default in three places (the CRD, the operator's CronJob, `runsync gc`): they agree."""
    import yaml
    from pathlib import Path

    crd = yaml.safe_load((Path(__file__).parents[1] / "charts/runsync/crds/stores.runsync.dev.yaml").read_text())
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    defaults = props["retention"]["properties"]
    assert defaults["keepManifests"]["default"] == retention.DEFAULT_KEEP
    assert defaults["minAge"]["default"] == retention.DEFAULT_MIN_AGE

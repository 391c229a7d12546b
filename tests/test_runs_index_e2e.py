"""`runsync runs` answers from the namespace's runs index (empty marker objects whose names carry
each run's summary): a few LISTs however many runs, no GET per run; and falls back to run.json
whenever a marker cannot be trusted (none, a running replica gone quiet, a marker write that
failed). Real SeaweedFS; requests counted on the CLI's own process."""

from __future__ import annotations

import json
import time

import pytest

from harness import Store
from runsync import keys, runmeta, runsindex
from runsync_testing import s3count

pytestmark = pytest.mark.s3

RUNS = 40


def recorder(store: Store, run: str, replica: str = "0", clock=time.time) -> runmeta.Recorder:
    layout = keys.Layout(store.layout.store, keys.RunPath.parse(run), replica)
    return runmeta.Recorder(store.client, layout, runmeta.Facts(writer=f"test@{replica}"), clock=clock)


def runs_json(cli, tmp_path, *args) -> tuple[dict[str, dict], dict[str, int]]:
    counts = tmp_path / f"counts-{time.monotonic_ns()}.json"
    result = cli("runs", *args, "--json", env={**cli.env, **s3count.environ(counts, tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    return {r["run"]: r for r in json.loads(result.stdout)}, s3count.read(counts)


def run_json(store: Store, run: str) -> dict:
    layout = keys.Layout(store.layout.store, keys.RunPath.parse(run), "0")
    return json.loads(store.read(layout.run_metadata_key))


def test_many_runs_listed_in_a_few_lists_with_what_run_json_says(cli, s3_env, tmp_path):
    store = Store(s3_env)
    for i in range(RUNS):
        recorder(store, f"team-a/proj/run-{i}").once(None)  # what `runsync sync` writes: ended at once
    both = recorder(store, "team-a/other/two-replicas")
    both.started(None)
    recorder(store, "team-a/other/two-replicas", replica="1").started(None)

    found, requests = runs_json(cli, tmp_path, "team-a")

    assert requests.get("GetObject", 0) == 0, requests  # no run.json read
    # namespace's projects, the index, and each project's runs (plus the store check's one LIST)
    assert requests.get("ListObjectsV2", 0) <= 5, requests
    assert len(found) == RUNS + 1
    for name in ("team-a/proj/run-0", "team-a/proj/run-39", "team-a/other/two-replicas"):
        doc = run_json(store, name)
        assert found[name] == {"run": name, "replicas": len(doc["replicas"]), "files": 0, "size": 0,
                               "state": doc["status"], "started": doc["created"], "updated": doc["updated"],
                               "ended": doc["ended"]}
    assert found["team-a/other/two-replicas"]["state"] == "running"
    assert found["team-a/other/two-replicas"]["replicas"] == 2

    # one project: still no GET, and only that project's runs
    only, requests = runs_json(cli, tmp_path, "team-a/other")
    assert list(only) == ["team-a/other/two-replicas"] and requests.get("GetObject", 0) == 0, requests


def test_a_running_replica_gone_quiet_is_read_from_run_json_and_its_replica(cli, s3_env, tmp_path):
    """Its marker says running, but the replica has not refreshed in 10 minutes: its end may have
    lost every race for run.json. The CLI reads run.json and the replica's own replica.json."""
    store = Store(s3_env)
    then = time.time() - 600
    quiet = recorder(store, "team-a/proj/quiet", clock=lambda: then)
    quiet.started(None)
    recorder(store, "team-a/proj/fine").once(None)
    layout = keys.Layout(store.layout.store, keys.RunPath.parse("team-a/proj/quiet"), "0")
    own = json.loads(store.read(layout.replica_metadata_key))
    own.update(status="ended", ended=then + 60, updated=then + 60)  # its end reached only replica.json
    store.client.put_object(Bucket=layout.store.bucket, Key=layout.replica_metadata_key, Body=json.dumps(own).encode())

    found, requests = runs_json(cli, tmp_path, "team-a")

    assert found["team-a/proj/quiet"]["state"] == "ended"  # the marker alone would say running
    assert found["team-a/proj/fine"]["state"] == "ended"
    assert requests.get("GetObject", 0) == 2, requests  # run.json and replica.json of the quiet run only


def test_a_marker_that_could_not_be_written_never_shows_an_old_state(cli, s3_env, tmp_path):
    """The marker PUT fails (injected on the real client) after run.json was written: the commit's
    metadata write still succeeds, the old marker is deleted, and `runs` reads run.json."""
    store = Store(s3_env)
    rec = recorder(store, "team-a/proj/run-x")
    rec.started(None)
    assert runs_json(cli, tmp_path, "team-a")[0]["team-a/proj/run-x"]["state"] == "running"

    def refuse(params, **_):
        if "/.runs/" in params["Key"]:
            raise ConnectionError("injected: marker PUT lost")
    store.client.meta.events.register("provide-client-params.s3.PutObject", refuse)
    rec.ended(None)
    assert run_json(store, "team-a/proj/run-x")["status"] == "ended"

    found, requests = runs_json(cli, tmp_path, "team-a")
    assert found["team-a/proj/run-x"]["state"] == "ended"
    assert requests.get("GetObject", 0) == 1, requests  # no marker left: run.json read
    assert not [k for k in store.keys() if "/.runs/" in k]


def test_a_damaged_run_json_rewritten_leaves_one_marker(s3_env):
    """A run.json that no longer parses starts its count again: the markers of before must not win."""
    store = Store(s3_env)
    rec = recorder(store, "team-a/proj/run-d")
    rec.started(None)
    rec.refresh = 0
    rec.committed(None)  # generation 2
    layout = keys.Layout(store.layout.store, keys.RunPath.parse("team-a/proj/run-d"), "0")
    store.client.put_object(Bucket=layout.store.bucket, Key=layout.run_metadata_key, Body=b"{torn")
    rec.ended(None)

    marked = runsindex.read(store.client, layout.store, "team-a")
    assert marked["proj/run-d"].state == "ended" and marked["proj/run-d"].generation == 1
    assert len([k for k in store.keys() if "/.runs/proj/run-d/" in k]) == 1

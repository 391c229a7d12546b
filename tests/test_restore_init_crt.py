"""restore-init through the CRT's S3 client (crtclient.py, issue 17): the same outcome and the
same error lines as through botocore (RUNSYNC_CRT=0), and the lease's conditional writes still
fence. Each case runs `runsync restore-init` as the pod does."""

from __future__ import annotations

import os
import socket

import pytest

from harness import restore_init, sha
from runsync import contract

pytestmark = [pytest.mark.s3]


def _error_line(result) -> str:
    return [line for line in result.stderr.splitlines() if line.startswith("runsync: error:")][-1]


@pytest.mark.parametrize("fault, says", [
    ("wrong secret", ["SignatureDoesNotMatch", "fix: set AWS_SECRET_ACCESS_KEY"]),
    ("unknown key", ["InvalidAccessKeyId", "fix: set AWS_ACCESS_KEY_ID"]),
    ("no bucket", ["NoSuchBucket", "fix: create it"]),
    ("unreachable", ["cannot reach the S3 endpoint", "fix: check AWS_ENDPOINT_URL_S3"]),
])
def test_restore_init_fails_with_botocores_words_through_the_crt(s3_env, tmp_path, fault, says):
    env = dict(s3_env)
    if fault == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    elif fault == "unknown key":
        env["AWS_ACCESS_KEY_ID"] = "NOSUCHKEYID"
    elif fault == "no bucket":
        env[contract.ENV_STORE] = env[contract.ENV_STORE].replace("s3://", "s3://gone-", 1)
    else:
        closed = socket.create_server(("127.0.0.1", 0))
        env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{closed.getsockname()[1]}"
        closed.close()  # nothing listens there now: connection refused
    lines = {}
    for crt in ("1", "0"):
        result = restore_init({**env, "RUNSYNC_CRT": crt}, tmp_path / f"pod-{crt}", {}, tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        lines[crt] = _error_line(result)
    assert lines["1"] == lines["0"]
    for words in says:
        assert words in lines["1"]


def test_restore_init_through_the_crt_takes_the_lease_and_fences_the_old_holder(s3_env, tmp_path, store, cli):
    from runsync import lease, manifest

    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("hello")
    assert cli("sync", str(src), "--run", "team-a/proj/run-1").returncode == 0
    layout = store.layout
    old = lease.acquire(store.client, layout, "pod-a", wait=0, max_seq=lambda: manifest.max_seq(store.client, layout))
    gone = lease.renew(store.client, layout, old, clock=lambda: 0.0)  # its heartbeat long past: not alive

    result = restore_init({**s3_env, "RUNSYNC_CRT": "1"}, tmp_path / "pod", {}, tmp_path, holder="pod-b", grace=0.5)

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pod" / "notes.txt").read_text() == "hello"
    now, _ = lease.read(store.client, layout)
    assert (now.holder, now.epoch) == ("pod-b", old.lease.epoch + 1)
    with pytest.raises(lease.LeaseLost):  # the old holder's next conditional write loses
        lease.renew(store.client, layout, gone)


def test_restore_init_through_the_crt_restores_a_file_over_16_mib(s3_env, tmp_path, cli):
    """The ranged GETs of a large file take botocore's client, built then (crtclient.Client.botocore)."""
    src = tmp_path / "src"
    src.mkdir()
    big, small = os.urandom(17 * 1024 * 1024 + 5), os.urandom(1000)
    (src / "big.bin").write_bytes(big)
    (src / "small.bin").write_bytes(small)
    assert cli("sync", str(src), "--run", "team-a/proj/run-1").returncode == 0

    result = restore_init({**s3_env, "RUNSYNC_CRT": "1"}, tmp_path / "pod", {}, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert sha((tmp_path / "pod" / "big.bin").read_bytes()) == sha(big)
    assert (tmp_path / "pod" / "small.bin").read_bytes() == small

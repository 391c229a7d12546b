"""restore-init through the CRT's S3 client (crtclient.py, issue 17): the same outcome and the
same error lines as through botocore (RUNSYNC_CRT=0), and the lease's conditional writes still
fence. Each case runs `runsync restore-init` as the pod does."""

from __future__ import annotations

import os
import socket
import urllib.parse

import pytest

from harness import LinkProxy, error_line, restore_init, sha
from runsync import contract

pytestmark = [pytest.mark.s3]


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
        lines[crt] = error_line(result)
    assert lines["1"] == lines["0"]
    for words in says:
        assert words in lines["1"]


def test_a_key_from_a_profile_is_named_when_it_is_refused(s3_env, tmp_path):
    """Keys from a profile (or a container's endpoint), not the environment: the error names the
    key the client signed with (it said '****' when AWS_ACCESS_KEY_ID was not set)."""
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = PROFILEKEYW9XZ\naws_secret_access_key = whatever\n")
    env = {k: v for k, v in s3_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update({"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
                "AWS_EC2_METADATA_DISABLED": "true"})
    lines = {}
    for crt in ("1", "0"):
        result = restore_init({**env, "RUNSYNC_CRT": crt}, tmp_path / f"pod-{crt}", {}, tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        lines[crt] = error_line(result)
    assert lines["1"] == lines["0"]
    assert "access key '****W9XZ' is unknown" in lines["1"] and "InvalidAccessKeyId" in lines["1"], lines


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


def _tls_proxy(target: str, ca):
    """A TLS front (certificate for localhost from `ca`) that pipes every connection to the plain
    HTTP endpoint `target`: SeaweedFS over HTTPS. Returns its https:// URL."""
    import ssl
    import threading
    import urllib.parse

    host, port = urllib.parse.urlsplit(target).hostname, urllib.parse.urlsplit(target).port
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def front(raw):
        try:
            conn = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # a client that does not trust the CA
            return
        back = socket.create_connection((host, port))
        threading.Thread(target=pipe, args=(back, conn), daemon=True).start()
        pipe(conn, back)

    def serve():
        while True:
            threading.Thread(target=front, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"https://localhost:{listener.getsockname()[1]}"


def test_restore_init_through_the_crt_trusts_aws_ca_bundle(s3_env, tmp_path, cli):
    """A private CA in AWS_CA_BUNDLE (which the system's trust store does not hold) is trusted."""
    trustme = pytest.importorskip("trustme")
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("over TLS")
    assert cli("sync", str(src), "--run", "team-a/proj/run-1").returncode == 0
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    endpoint = _tls_proxy(s3_env["AWS_ENDPOINT_URL_S3"], ca)
    env = {**s3_env, "RUNSYNC_CRT": "1", "AWS_ENDPOINT_URL_S3": endpoint}

    trusted = restore_init({**env, "AWS_CA_BUNDLE": str(bundle)}, tmp_path / "pod", {}, tmp_path, holder="pod-b")
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert (tmp_path / "pod" / "notes.txt").read_text() == "over TLS"


@pytest.mark.slow
def test_an_untrusted_certificate_is_named_with_its_fix_through_the_crt_and_botocore(s3_env, tmp_path):
    """Without the bundle the server's certificate is refused: both clients say so and name the
    fix. (The CRT retries the handshake silently: its line comes after the read timeout, 60 s.)"""
    trustme = pytest.importorskip("trustme")
    endpoint = _tls_proxy(s3_env["AWS_ENDPOINT_URL_S3"], trustme.CA())
    lines = {}
    for crt in ("1", "0"):
        env = {**s3_env, "RUNSYNC_CRT": crt, "AWS_ENDPOINT_URL_S3": endpoint}
        env.pop("AWS_CA_BUNDLE", None)
        result = restore_init(env, tmp_path / f"pod-{crt}", {}, tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        lines[crt] = error_line(result)
    for line in lines.values():
        assert f"the S3 endpoint {endpoint}" in line and "certificate" in line, line
        assert "fix: set AWS_CA_BUNDLE" in line, line


def test_a_handshake_the_crt_gave_up_on_is_named_as_the_certificate_it_refused(s3_env):
    """On a busy machine the CRT may give up on a refused handshake after its retries, before
    the read timeout: its error (a TLS one, no reason given) is still worded as an untrusted
    certificate with its fix, not as an unreachable server (seen under load in `.ci/run`)."""
    from awscrt.exceptions import AwsCrtError

    from runsync import crtclient, keys, transfer

    trustme = pytest.importorskip("trustme")
    endpoint = _tls_proxy(s3_env["AWS_ENDPOINT_URL_S3"], trustme.CA())
    gave_up = AwsCrtError(1029, "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE", "TLS (SSL) negotiation failed")
    line = str(transfer.describe(crtclient._botocore_error(gave_up, endpoint), keys.StoreURL.parse("s3://bucket/runs")))
    assert endpoint in line and "certificate this client does not trust" in line, line
    assert "fix: set AWS_CA_BUNDLE" in line, line


def test_a_handshake_refused_inside_a_small_files_get_or_put_is_named_as_the_certificate(s3_env):
    """A small file's GET or PUT goes through the CRT itself (crtobjects.py), not through the
    client the store was checked with: a handshake the CRT gave up on there reaches the upload's
    or restore's error line as the CRT's own error, and is still worded as the certificate it
    refused, with its fix (it said "cannot reach")."""
    import types

    from awscrt.exceptions import AwsCrtError

    from runsync import keys, transfer

    trustme = pytest.importorskip("trustme")
    endpoint = _tls_proxy(s3_env["AWS_ENDPOINT_URL_S3"], trustme.CA())
    client = types.SimpleNamespace(meta=types.SimpleNamespace(endpoint_url=endpoint))
    gave_up = AwsCrtError(1029, "AWS_IO_TLS_ERROR_NEGOTIATION_FAILURE", "TLS (SSL) negotiation failed")
    line = str(transfer.describe(gave_up, keys.StoreURL.parse("s3://bucket/runs"), client))
    assert endpoint in line and "certificate this client does not trust" in line, line
    assert "fix: set AWS_CA_BUNDLE" in line, line


@pytest.mark.parametrize("command", ["restore-init", "runsync restore"])
def test_a_missing_aws_ca_bundle_is_one_line_naming_it_not_a_traceback(s3_env, tmp_path, cli, command):
    """Both restores build the CRT's TLS context from AWS_CA_BUNDLE before their first request: a
    path that is not there is named with its fix (it was a FileNotFoundError traceback)."""
    trustme = pytest.importorskip("trustme")
    endpoint = _tls_proxy(s3_env["AWS_ENDPOINT_URL_S3"], trustme.CA())
    missing = tmp_path / "no-such-ca.pem"
    env = {**s3_env, "RUNSYNC_CRT": "1", "AWS_ENDPOINT_URL_S3": endpoint, "AWS_CA_BUNDLE": str(missing)}
    if command == "restore-init":
        result = restore_init(env, tmp_path / "pod", {}, tmp_path)
    else:
        result = cli("restore", "team-a/proj/run-1", "--to", str(tmp_path / "laptop"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = error_line(result)
    assert f"AWS_CA_BUNDLE={missing}" in line and "fix: point AWS_CA_BUNDLE" in line, line


def test_runsync_restore_without_a_region_variable_asks_through_botocore(s3_env, tmp_path, cli, monkeypatch):
    """A laptop's region may be in its AWS profile, which only botocore reads (and botocore follows
    S3's redirect to the bucket's region): without AWS_REGION / AWS_DEFAULT_REGION and on AWS itself,
    `runsync restore` builds botocore's client; with a region variable, the CRT's."""
    from runsync import crtclient, transfer

    monkeypatch.setenv("RUNSYNC_CRT", "1")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert not isinstance(crtclient.for_restore(transfer.Settings()), crtclient.Client)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert isinstance(crtclient.for_restore(transfer.Settings()), crtclient.Client)
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env["AWS_ENDPOINT_URL_S3"])  # an S3-compatible server: no redirects
    assert isinstance(crtclient.for_restore(transfer.Settings()), crtclient.Client)


@pytest.mark.parametrize("crt", ["1", "0"])
def test_https_to_a_plain_http_port_is_named_as_the_wrong_scheme_not_a_certificate(s3_env, tmp_path, crt):
    """AWS_ENDPOINT_URL_S3 says https:// where the server speaks plain HTTP: there is no
    certificate to trust, so the line names the scheme, not AWS_CA_BUNDLE."""
    plain = s3_env["AWS_ENDPOINT_URL_S3"]
    assert plain.startswith("http://")
    wrong = "https://" + plain[len("http://"):]
    env = {**s3_env, "RUNSYNC_CRT": crt, "AWS_ENDPOINT_URL_S3": wrong}
    env.pop("AWS_CA_BUNDLE", None)
    result = restore_init(env, tmp_path / "pod", {}, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = error_line(result)
    assert wrong in line and "AWS_CA_BUNDLE" not in line, line
    assert "fix: check AWS_ENDPOINT_URL_S3" in line, line


def test_a_file_of_two_crt_parts_comes_in_one_get(s3_env, tmp_path, cli, store):
    """A checkpoint between one and two of the CRT's 8 MiB parts (a 14 MB state dict): one GET,
    not a first part and then, a round trip later, the second (crtobjects.Objects.get)."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(14 * 1000 * 1000)
    (src / "model.pt").write_bytes(data)
    assert cli("sync", str(src), "--run", "team-a/proj/run-1").returncode == 0
    proxy = LinkProxy(s3_env["AWS_ENDPOINT_URL_S3"])
    try:
        result = restore_init({**s3_env, "AWS_ENDPOINT_URL_S3": proxy.endpoint, "RUNSYNC_CRT": "1"},
                              tmp_path / "pod", {}, tmp_path)
    finally:
        proxy.close()

    assert result.returncode == 0, result.stdout + result.stderr
    assert sha((tmp_path / "pod" / "model.pt").read_bytes()) == sha(data)
    key = store.manifests()[-1].files["model.pt"].key
    gets = [(method, ranged) for method, path, ranged in proxy.requests if path.endswith(urllib.parse.quote(key))]
    # the CRT's (botocore's GET of a whole object names no range): its first part, sized to hold it all
    assert gets == [("GET", f"bytes=0-{14 * 1024 * 1024 - 1}")], proxy.requests

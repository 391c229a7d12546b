"""A bucket in another region than the one runsync signs for (AWS_REGION; in a pod, the Store's
spec.region). S3 refuses a request signed for the wrong region and names the right one; botocore
follows that, the CRT's client (restore-init, small objects) does not. So: the Store's `Ready`
condition says the region is wrong before any pod starts, and a command that meets it fails with
one line naming the bucket's region and the fix, never with S3's raw error.

The front below is SeaweedFS behind S3's region rule: a request signed for any region but
eu-west-1 gets the answer AWS gives (400 AuthorizationHeaderMalformed with the bucket's
<Region>; a HEAD, which has no body, the x-amz-bucket-region header); one signed for eu-west-1
goes to SeaweedFS unchanged."""

from __future__ import annotations

import http.client
import http.server
import re
import threading
import urllib.parse

import pytest

from harness import restore_init
from runsync_operator import stores as store_handlers

pytestmark = [pytest.mark.s3]

BUCKET_REGION = "eu-west-1"


def _regional_front(target: str, region: str = BUCKET_REGION) -> str:
    """An endpoint that answers as AWS S3 does for buckets in `region`, backed by `target`."""
    back = urllib.parse.urlsplit(target)

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def handle_any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            signed = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/s3/", self.headers.get("Authorization", ""))
            if signed and signed.group(1) != region:
                self.wrong_region(signed.group(1))
                return
            upstream = http.client.HTTPConnection(back.hostname, back.port, timeout=30)
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():  # Host too: the signature covers it
                upstream.putheader(name, value)
            upstream.endheaders(body or None)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response_only(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(name, value)
            self.send_header("x-amz-bucket-region", region)
            self.send_header("Content-Length", answer.getheader("Content-Length") if self.command == "HEAD"
                             else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            upstream.close()

        def wrong_region(self, signed_for: str) -> None:
            self.send_response_only(400)
            if self.command == "HEAD":  # no body to say it in: S3 sends the header alone
                self.send_header("x-amz-bucket-region", region)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AuthorizationHeaderMalformed</Code>"
                   f"<Message>The authorization header is malformed; the region '{signed_for}' is wrong; "
                   f"expecting '{region}'</Message><Region>{region}</Region><RequestId>R1</RequestId>"
                   f"</Error>").encode()
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            self.wfile.write(xml)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("runsync: error:")]
    assert lines, result.stdout + result.stderr
    return lines[-1]


def _says_the_region(line: str) -> None:
    assert f"is in region {BUCKET_REGION}" in line, line
    assert "us-east-1" in line and f"fix: set AWS_REGION={BUCKET_REGION}" in line, line
    assert "spec.region" in line, line  # where a pod's AWS_REGION comes from


@pytest.fixture
def front_env(s3_env, tmp_path, cli):
    """A run with one file, then the environment of a user whose AWS_REGION is not the bucket's."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("hello")
    assert cli("sync", str(src), "--run", "team-a/proj/run-1").returncode == 0
    return {**s3_env, "AWS_ENDPOINT_URL_S3": _regional_front(s3_env["AWS_ENDPOINT_URL_S3"]),
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.mark.parametrize("command", ["restore-init", "runsync restore", "runsync sync"])
def test_a_wrong_region_is_one_line_naming_the_buckets_region(front_env, tmp_path, cli, command):
    env = {**front_env, "RUNSYNC_CRT": "1"}
    if command == "restore-init":
        result = restore_init(env, tmp_path / "pod", {}, tmp_path)
    elif command == "runsync restore":
        result = cli("restore", "team-a/proj/run-1", "--to", str(tmp_path / "laptop"), env=env)
    else:
        (tmp_path / "src" / "more.txt").write_text("more")
        result = cli("sync", str(tmp_path / "src"), "--run", "team-a/proj/run-1", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    _says_the_region(_error_line(result))
    assert not (tmp_path / "pod" / "notes.txt").exists() and not (tmp_path / "laptop" / "notes.txt").exists()


def test_the_right_region_through_the_front_restores(front_env, tmp_path):
    """The front is no obstacle to a client that signs for the bucket's region."""
    env = {**front_env, "RUNSYNC_CRT": "1", "AWS_REGION": BUCKET_REGION, "AWS_DEFAULT_REGION": BUCKET_REGION}
    result = restore_init(env, tmp_path / "pod", {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pod" / "notes.txt").read_text() == "hello"


def test_a_store_in_the_wrong_region_is_not_ready_and_says_which(s3_server, s3_client):
    s3_client.create_bucket(Bucket="health-region")
    creds = (s3_server.credentials.access_key, s3_server.credentials.secret_key)
    front = _regional_front(s3_server.endpoint)
    wrong = store_handlers.check_health(store_handlers.StoreSpec("health-region", endpoint=front), creds)
    assert wrong["status"] == "False" and wrong["reason"] == "WrongRegion", wrong
    assert f"is in region {BUCKET_REGION}" in wrong["message"] and "us-east-1" in wrong["message"], wrong
    assert f"fix: set spec.region: {BUCKET_REGION}" in wrong["message"], wrong
    right = store_handlers.check_health(
        store_handlers.StoreSpec("health-region", endpoint=front, region=BUCKET_REGION), creds)
    assert right["status"] == "True" and right["reason"] == "BucketReachable", right
    plain = store_handlers.check_health(store_handlers.StoreSpec("health-region", endpoint=s3_server.endpoint), creds)
    assert plain["status"] == "True", plain  # a server that names no region: nothing to compare

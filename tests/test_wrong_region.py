"""A bucket in another region than the one runsync signs for (AWS_REGION; in a pod, the Store's
spec.region). S3 refuses a request signed for the wrong region and names the right one; botocore
follows that, the CRT's client (restore-init, small objects) does not. So: the Store's `Ready`
condition says the region is wrong before any pod starts, and a command that meets it fails with
one line naming the bucket's region and the fix, never with S3's raw error.

The front below is SeaweedFS behind S3's region rule: a request signed for any region but
eu-west-1 gets one of the answers AWS gives (`malformed`: 400 AuthorizationHeaderMalformed with
the bucket's <Region>; `redirect`: 301 PermanentRedirect, the region in the x-amz-bucket-region
header only; a HEAD, which has no body, the header alone); one signed for eu-west-1 goes to
SeaweedFS unchanged. `named`: a server that names eu-west-1 on every answer but refuses nothing
(MinIO with a region of its own), which is no error."""

from __future__ import annotations

import http.client
import http.server
import re
import threading
import urllib.parse

import pytest

from harness import error_line, restore_init
from runsync_operator import stores as store_handlers

pytestmark = [pytest.mark.s3]

BUCKET_REGION = "eu-west-1"


def _regional_front(target: str, refusal: str = "malformed", region: str = BUCKET_REGION) -> str:
    """An endpoint that answers as AWS S3 does for buckets in `region`, backed by `target`."""
    back = urllib.parse.urlsplit(target)

    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def handle_any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            signed = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/s3/", self.headers.get("Authorization", ""))
            if signed and signed.group(1) != region and refusal != "named":
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
            self.send_response_only(301 if refusal == "redirect" else 400)
            if self.command == "HEAD":  # no body to say it in: S3 sends the header alone
                self.send_header("x-amz-bucket-region", region)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if refusal == "redirect":
                self.send_header("x-amz-bucket-region", region)
                xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code><Message>The "
                       "bucket you are attempting to access must be addressed using the specified endpoint. "
                       f"Please send all future requests to this endpoint.</Message><Endpoint>s3.{region}."
                       "amazonaws.com</Endpoint><RequestId>R1</RequestId></Error>").encode()
            else:
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


def _says_the_region(line: str) -> None:
    assert f"is in region {BUCKET_REGION}" in line, line
    assert "us-east-1" in line and f"fix: set AWS_REGION={BUCKET_REGION}" in line, line
    assert "spec.region" in line, line  # where a pod's AWS_REGION comes from


def _seeded(s3_env, tmp_path, cli, refusal: str) -> dict:
    """A run with one file, then the environment of a user whose AWS_REGION is not the bucket's."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "notes.txt").write_text("hello")
    assert cli("sync", str(src), "--run", "team-a/proj/run-1").returncode == 0
    return {**s3_env, "AWS_ENDPOINT_URL_S3": _regional_front(s3_env["AWS_ENDPOINT_URL_S3"], refusal),
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.mark.parametrize("refusal", ["malformed", "redirect"])
@pytest.mark.parametrize("command", ["restore-init", "runsync restore", "runsync sync"])
def test_a_wrong_region_is_one_line_naming_the_buckets_region(s3_env, tmp_path, cli, command, refusal):
    env = {**_seeded(s3_env, tmp_path, cli, refusal), "RUNSYNC_CRT": "1"}
    if command == "restore-init":
        result = restore_init(env, tmp_path / "pod", {}, tmp_path)
    elif command == "runsync restore":
        result = cli("restore", "team-a/proj/run-1", "--to", str(tmp_path / "laptop"), env=env)
    else:
        (tmp_path / "src" / "more.txt").write_text("more")
        result = cli("sync", str(tmp_path / "src"), "--run", "team-a/proj/run-1", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    _says_the_region(error_line(result))
    assert not (tmp_path / "pod" / "notes.txt").exists() and not (tmp_path / "laptop" / "notes.txt").exists()


@pytest.mark.parametrize("refusal, region", [("malformed", BUCKET_REGION), ("named", "us-east-1")])
def test_a_region_the_server_accepts_restores(s3_env, tmp_path, cli, refusal, region):
    """The front is no obstacle to a client that signs for the bucket's region, nor is a server
    that names a region of its own but answers requests signed for another."""
    env = {**_seeded(s3_env, tmp_path, cli, refusal), "RUNSYNC_CRT": "1", "AWS_REGION": region,
           "AWS_DEFAULT_REGION": region}
    result = restore_init(env, tmp_path / "pod", {}, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pod" / "notes.txt").read_text() == "hello"


@pytest.mark.parametrize("refusal", ["malformed", "redirect"])
def test_a_store_in_the_wrong_region_is_not_ready_and_says_which(s3_server, s3_client, refusal):
    """botocore follows S3 to the bucket's region, so the listing passes; the condition still says
    that requests signed for the Store's region are refused (as its pods' would be)."""
    bucket = f"health-{refusal}"
    s3_client.create_bucket(Bucket=bucket)
    creds = (s3_server.credentials.access_key, s3_server.credentials.secret_key)
    front = _regional_front(s3_server.endpoint, refusal)
    wrong = store_handlers.check_health(store_handlers.StoreSpec(bucket, endpoint=front), creds)
    assert wrong["status"] == "False" and wrong["reason"] == "WrongRegion", wrong
    assert f"is in region {BUCKET_REGION}, not us-east-1" in wrong["message"], wrong
    assert f"fix: set the Store's spec.region: {BUCKET_REGION}" in wrong["message"], wrong
    right = store_handlers.check_health(store_handlers.StoreSpec(bucket, endpoint=front, region=BUCKET_REGION), creds)
    assert right["status"] == "True" and right["reason"] == "BucketReachable", right
    named = store_handlers.check_health(
        store_handlers.StoreSpec(bucket, endpoint=_regional_front(s3_server.endpoint, "named")), creds)
    assert named["status"] == "True", named  # names eu-west-1, answers us-east-1's requests: works


@pytest.mark.parametrize("code, status, headers, message, region", [
    ("AuthorizationHeaderMalformed", 400, {}, "the region 'us-east-1' is wrong", "eu-west-1"),
    ("PermanentRedirect", 301, {"x-amz-bucket-region": "eu-west-1"}, "", "eu-west-1"),
    ("400", 400, {"x-amz-bucket-region": "eu-west-1"}, "Bad Request", "eu-west-1"),  # a HEAD
    ("IllegalLocationConstraintException", 400, {},
     "The me-south-1 location constraint is incompatible for the region specific endpoint", "me-south-1"),
    ("PermanentRedirect", 301, {}, "", ""),  # refused for its region, which S3 did not name
    ("BadDigest", 400, {"x-amz-bucket-region": "eu-west-1"}, "The Content-MD5 you specified did not match", None),
    ("400", 400, {}, "Bad Request", None),  # a HEAD refused for another reason
    ("TemporaryRedirect", 307, {"x-amz-bucket-region": "us-east-1"}, "", None),  # a new bucket's DNS: same region
])
def test_only_a_refusal_for_the_region_is_called_one(code, status, headers, message, region, monkeypatch):
    from botocore.exceptions import ClientError

    from runsync import keys, regions, transfer

    error = {"Code": code, "Message": message, **({"Region": "eu-west-1"} if "wrong" in message else {})}
    response = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}
    assert regions.refused_for(response, "us-east-1") == region
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # what describe says requests were signed for, without a client
    line = str(transfer.describe(ClientError(response, "GetObject"), keys.StoreURL.parse("s3://ml-runs/runs")))
    if region is None:
        assert "region" not in line.replace("x-amz-bucket-region", ""), line
    else:
        assert f"bucket 'ml-runs' {'is in region ' + region if region else 'is not in region us-east-1'}" in line, line
        assert "fix: set AWS_REGION=" in line, line

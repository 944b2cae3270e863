"""Two stateless `ims serve` nodes on one PostgreSQL database and one store: a token issued by
one node is accepted by the other, an image created and uploaded through one is listed, shown
and downloaded through the other, and deleting it on one is seen by both. Run twice: with a
shared store directory, and on the real engines of a scale-out deployment, PostgreSQL plus
S3-compatible object storage (the Garage that scripts/test.sh starts), where the test also
looks into the bucket: the blob is there after the upload and gone after the delete.

Needs $IMS_TEST_PG_URL (IMS_SKIP_PG=1 skips) and $IMS_TEST_S3_* (IMS_SKIP_S3=1 skips the S3
case). The database and bucket are shared with other suites, so the test uses its own image
names and a fresh key prefix.
"""

import datetime
import hashlib
import hmac
import json
import os
import subprocess
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from test_robustness import ADMIN_PASSWORD, Server


def s3_settings():
    """The test S3 server's settings, or None (skip) / failure when they are missing."""
    if not os.environ.get("IMS_TEST_S3_ENDPOINT"):
        if os.environ.get("IMS_SKIP_S3") == "1":
            pytest.skip("IMS_SKIP_S3=1")
        pytest.fail("IMS_TEST_S3_ENDPOINT is not set (scripts/test.sh starts Garage); IMS_SKIP_S3=1 skips")
    return {k: os.environ[f"IMS_TEST_S3_{k}"]
            for k in ("ENDPOINT", "REGION", "BUCKET", "ACCESS_KEY", "SECRET_KEY")}


def s3_list(s3, prefix):
    """Keys and sizes under `prefix` in the test bucket: ListObjectsV2 signed with SigV4."""
    endpoint = urllib.parse.urlsplit(s3["ENDPOINT"])
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    query = urllib.parse.urlencode(sorted({"list-type": "2", "prefix": prefix}.items()),
                                   quote_via=urllib.parse.quote)
    path = f"/{s3['BUCKET']}"
    payload_hash = hashlib.sha256(b"").hexdigest()
    headers = {"host": endpoint.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["GET", path, query, *(f"{k}:{headers[k]}" for k in sorted(headers)), "",
                           signed, payload_hash])
    scope = f"{day}/{s3['REGION']}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + s3["SECRET_KEY"]).encode()
    for part in (day, s3["REGION"], "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={s3['ACCESS_KEY']}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    req = urllib.request.Request(f"{s3['ENDPOINT']}{path}?{query}", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        root = ET.fromstring(r.read())
    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    return {c.findtext("s3:Key", namespaces=ns): int(c.findtext("s3:Size", namespaces=ns))
            for c in root.findall("s3:Contents", ns)}


def start_nodes(tmp_path, store_env):
    url = os.environ.get("IMS_TEST_PG_URL")
    if not url:
        if os.environ.get("IMS_SKIP_PG") == "1":
            pytest.skip("IMS_SKIP_PG=1")
        pytest.fail("IMS_TEST_PG_URL is not set (scripts/test.sh starts PostgreSQL); IMS_SKIP_PG=1 skips")
    # The database may hold an admin from an earlier run: give it this run's password (if it
    # does not exist yet, the first node's bootstrap creates it with that password).
    binary = os.environ.get("IMS_BIN") or str(Path(__file__).resolve().parents[2] / "target/release/ims")
    subprocess.run([binary, "admin", "--database-url", url, "--data-dir", str(tmp_path / "admin"),
                    "user", "set-password", "admin", "--password", ADMIN_PASSWORD],
                   capture_output=True, check=False)
    servers = []
    for name in ("a", "b"):
        s = Server(tmp_path / f"node-{name}")
        s.extra_env = {"IMS_DATABASE_URL": url, **store_env}
        servers.append(s)
    for s in servers:
        s.start()
    return servers


@pytest.fixture
def nodes(tmp_path):
    servers = start_nodes(tmp_path, {"IMS_STORE_PATH": str(tmp_path / "shared-store")})
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def s3_nodes(tmp_path):
    s3 = s3_settings()
    prefix = f"scale-out-{uuid.uuid4().hex[:12]}"
    servers = start_nodes(tmp_path, {
        "IMS_STORE_KIND": "s3",
        "IMS_STORE_S3_BUCKET": s3["BUCKET"],
        "IMS_STORE_S3_PREFIX": prefix,
        "IMS_STORE_S3_ENDPOINT": s3["ENDPOINT"],
        "IMS_STORE_S3_REGION": s3["REGION"],
        "IMS_STORE_S3_ACCESS_KEY_ID": s3["ACCESS_KEY"],
        "IMS_STORE_S3_SECRET_ACCESS_KEY": s3["SECRET_KEY"],
        "IMS_STORE_S3_ALLOW_HTTP": "true",
    })
    yield servers, s3, prefix
    for s in servers:
        s.stop()


def test_two_nodes_share_one_database_and_store(nodes):
    a, b = nodes
    b.token = a.token  # a token minted by node a, used on node b
    name = f"scale-{uuid.uuid4().hex[:8]}"
    image_id = a.create_image(name=name)
    data = os.urandom(3 << 20)
    status, _, body = a.request("PUT", f"/v2/images/{image_id}/file", data,
                                {"Content-Type": "application/octet-stream"})
    assert status == 204, body
    status, _, body = b.request("GET", f"/v2/images?name={name}")
    assert status == 200, body
    listed = json.loads(body)["images"]
    assert [i["id"] for i in listed] == [image_id]
    assert listed[0]["checksum"] == hashlib.md5(data).hexdigest()
    status, _, downloaded = b.request("GET", f"/v2/images/{image_id}/file")
    assert status == 200 and downloaded == data
    status, _, _ = b.request("DELETE", f"/v2/images/{image_id}")
    assert status == 204
    status, _, _ = a.request("GET", f"/v2/images/{image_id}")
    assert status == 404


def test_two_nodes_share_postgres_and_s3(s3_nodes):
    (a, b), s3, prefix = s3_nodes
    b.token = a.token
    name = f"scale-s3-{uuid.uuid4().hex[:8]}"
    image_id = a.create_image(name=name)
    # More than one 16 MiB part, so the multipart path with several parts is exercised.
    data = os.urandom(40 << 20)
    status, _, body = a.request("PUT", f"/v2/images/{image_id}/file", data,
                                {"Content-Type": "application/octet-stream"})
    assert status == 204, body
    blobs = s3_list(s3, f"{prefix}/blobs/images/{image_id}/")
    assert list(blobs.values()) == [len(data)], blobs
    assert s3_list(s3, f"{prefix}/uploads/") == {}, "no upload marker left after commit"

    status, _, body = b.request("GET", f"/v2/images/{image_id}")
    assert status == 200, body
    shown = json.loads(body)
    assert shown["status"] == "active" and shown["size"] == len(data)
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    status, _, downloaded = b.request("GET", f"/v2/images/{image_id}/file")
    assert status == 200
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(data).digest(), "byte-identical"

    status, _, _ = b.request("DELETE", f"/v2/images/{image_id}")
    assert status == 204
    status, _, _ = a.request("GET", f"/v2/images/{image_id}")
    assert status == 404
    assert s3_list(s3, f"{prefix}/blobs/images/{image_id}/") == {}, "the blob is gone from the bucket"

"""Two stateless `ims serve` nodes on one PostgreSQL database and one store directory: a token
issued by one node is accepted by the other, an image created and uploaded through one is
listed, shown and downloaded through the other, and deleting it on one is seen by both.

Needs $IMS_TEST_PG_URL (scripts/test.sh starts a private PostgreSQL); the database is shared
with other suites, so the test uses its own image names.
"""

import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from test_robustness import ADMIN_PASSWORD, Server


@pytest.fixture
def nodes(tmp_path):
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
    store = tmp_path / "shared-store"
    servers = []
    for name in ("a", "b"):
        s = Server(tmp_path / f"node-{name}")
        s.extra_env = {"IMS_DATABASE_URL": url, "IMS_STORE_PATH": str(store)}
        servers.append(s)
    for s in servers:
        s.start()
    yield servers
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

"""Multiple stores through the real clients: the server scripts/test.sh starts has two local
stores, `fs` (weight 100, default) and `fs2` (weight 50), and the read-only http store `web`
(image locations).

glanceclient lists them (`glance stores-info`), uploads into a chosen one
(`glance image-create --store`), copies an active image to another (`glance image-import
--import-method copy-image --stores`, admin) and deletes it from one (`glance stores-delete`,
admin); openstackclient lists them (`openstack image stores list`); openstacksdk imports into a
chosen store (`create_image(use_import=True, stores=[...])`). Each step checks the image's
`stores` and that the data reads back byte-identical.
"""

import json
import os
import time

import pytest

from test_openstack_clients import file_digest, run, unique_name

SMALL_IMAGE_SIZE = 1024 * 1024
WAIT_SECS = 120


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "small.raw"
    path.write_bytes(os.urandom(SMALL_IMAGE_SIZE))
    return path


@pytest.fixture(scope="module")
def admin_env():
    password = os.environ.get("IMS_ADMIN_PASSWORD")
    if not password:
        pytest.fail("IMS_ADMIN_PASSWORD is not set (scripts/test.sh's server stage sets it)")
    env = dict(os.environ, OS_USERNAME="admin", OS_PASSWORD=password, OS_PROJECT_NAME="admin")
    return env


def as_admin(admin_env, *argv):
    saved = dict(os.environ)
    os.environ.update(admin_env)
    try:
        return run(*argv)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def image_json(image_id):
    return json.loads(run("openstack", "image", "show", image_id, "-f", "json").stdout)


def stores_of(image):
    """`stores` as openstackclient shows it (top level or among the properties)."""
    if image.get("stores"):
        return image["stores"]
    return (image.get("properties") or {}).get("stores")


def wait_for_stores(image_id, expected):
    deadline = time.monotonic() + WAIT_SECS
    image = {}
    while time.monotonic() < deadline:
        image = image_json(image_id)
        if image.get("status") == "active" and stores_of(image) == expected:
            return image
        time.sleep(1)
    pytest.fail(f"image {image_id} never reached stores {expected!r}: {image}")


def assert_reads_back(image_id, source, tmp_path):
    out = tmp_path / f"{image_id}.raw"
    run("openstack", "image", "save", "--file", str(out), image_id)
    assert file_digest(out, "sha256") == file_digest(source, "sha256")


def test_store_listing_by_glanceclient_and_openstackclient():
    listed = json.loads(run("openstack", "image", "stores", "list", "-f", "json").stdout)
    ids = [s.get("ID") or s.get("id") for s in listed]
    assert ids == ["fs", "fs2", "web"], listed
    text = run("glance", "stores-info").stdout
    assert '"id": "fs"' in text and '"id": "fs2"' in text and '"default": "true"' in text, text
    assert '"read-only": "true"' in text, text


def test_upload_to_a_store_copy_image_and_delete_from_store(small, admin_env, tmp_path):
    name = unique_name("stores")
    created = run("glance", "--os-image-api-version", "2", "image-create", "--name", name,
                  "--disk-format", "raw", "--container-format", "bare", "--store", "fs2",
                  "--file", str(small)).stdout
    image_id = next(line.split("|")[2].strip() for line in created.splitlines()
                    if line.startswith("| id "))
    try:
        wait_for_stores(image_id, "fs2")
        assert_reads_back(image_id, small, tmp_path)

        as_admin(admin_env, "glance", "image-import", image_id, "--import-method", "copy-image",
                 "--stores", "fs")
        image = wait_for_stores(image_id, "fs,fs2")
        assert image_json(image_id).get("properties", {}).get("os_glance_failed_import", "") == ""

        as_admin(admin_env, "glance", "stores-delete", "--store", "fs", image_id)
        wait_for_stores(image_id, "fs2")
        assert_reads_back(image_id, small, tmp_path)
        refused = run("glance", "stores-delete", "--store", "fs2", image_id, check=False)
        assert refused.returncode != 0, "a member may not delete locations, nor the last one"
    finally:
        run("openstack", "image", "delete", image_id, check=False)


def test_openstacksdk_imports_into_a_chosen_store(small, tmp_path):
    import openstack

    conn = openstack.connect()
    stores = [s.id for s in conn.image.stores()]
    assert stores == ["fs", "fs2", "web"]
    image = conn.image.create_image(
        name=unique_name("sdk-store"), filename=str(small), disk_format="raw",
        container_format="bare", use_import=True, stores=["fs2"], wait=True, timeout=WAIT_SECS)
    try:
        shown = wait_for_stores(image.id, "fs2")
        assert shown["size"] == SMALL_IMAGE_SIZE
        assert_reads_back(image.id, small, tmp_path)
    finally:
        conn.image.delete_image(image.id, ignore_missing=True)

"""Drives a running ims server with the real OpenStack clients: openstackclient (the
`openstack` CLI), openstacksdk and python-glanceclient (the `glance` CLI).

scripts/test.sh runs this with pytest from its venv against the server it started, passing the
credentials as the usual OS_* variables (OS_AUTH_URL = http://HOST:PORT/identity/v3, ...).
Each flow uploads the same 50 MiB random raw file, checks what the server reports about it
(size, md5 checksum, sha512 os_hash_value, properties, tags), downloads it back byte-identical
and deletes it.
"""

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

IMAGE_SIZE = 50 * 1024 * 1024
REQUIRED_ENV = ("OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME")


@pytest.fixture(scope="session", autouse=True)
def os_env():
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        pytest.fail(f"set {', '.join(missing)} (scripts/test.sh does) to point at a running ims")
    os.environ.setdefault("OS_USER_DOMAIN_NAME", "Default")
    os.environ.setdefault("OS_PROJECT_DOMAIN_NAME", "Default")
    os.environ.setdefault("OS_IDENTITY_API_VERSION", "3")
    os.environ.setdefault("OS_REGION_NAME", "RegionOne")
    os.environ.setdefault("OS_INTERFACE", "public")


class Payload:
    def __init__(self, path):
        self.path = path
        self.size = path.stat().st_size
        self.md5 = file_digest(path, "md5")
        self.sha256 = file_digest(path, "sha256")
        self.sha512 = file_digest(path, "sha512")


def file_digest(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="session")
def payload(tmp_path_factory):
    path = tmp_path_factory.mktemp("payload") / "random.raw"
    with open(path, "wb") as f:
        for _ in range(IMAGE_SIZE // (1 << 20)):
            f.write(os.urandom(1 << 20))
    return Payload(path)


def unique_name(client):
    return f"ims-{client}-{uuid.uuid4().hex[:8]}"


def run(*argv, check=True):
    """Runs a CLI from the venv, echoing it so a failure shows what was asked and answered."""
    exe = shutil.which(argv[0])
    assert exe, f"{argv[0]} not on PATH"
    print("$", " ".join(argv))
    proc = subprocess.run([exe, *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    if proc.stdout:
        print(proc.stdout[-4000:])
    if proc.stderr:
        print(proc.stderr[-4000:])
    if check:
        assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


def assert_uploaded(fields, payload, name):
    """Fields of an active image holding `payload` (works for OSC, SDK and glance output)."""
    assert fields["name"] == name
    assert fields["status"] == "active", fields
    assert fields["disk_format"] == "raw"
    assert fields["container_format"] == "bare"
    assert int(fields["size"]) == payload.size
    assert fields["checksum"] == payload.md5
    assert fields["os_hash_algo"] == "sha512"
    assert fields["os_hash_value"] == payload.sha512


# --- openstackclient -------------------------------------------------------------------------

def osc_json(*argv):
    return json.loads(run("openstack", *argv, "-f", "json").stdout)


def osc_flat(image):
    """OSC shows extra properties under 'properties'; merge them with the top-level fields."""
    fields = dict(image)
    props = fields.pop("properties", None) or {}
    if isinstance(props, dict):
        fields.update(props)
    return fields


def as_list(value):
    if isinstance(value, list):
        return value
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def test_openstackclient_image_flow(payload, tmp_path):
    name = unique_name("osc")
    created = osc_json("image", "create", "--disk-format", "raw", "--container-format", "bare",
                       "--file", str(payload.path), name)
    image_id = created["id"]
    try:
        assert created["name"] == name

        listed = osc_json("image", "list")
        assert image_id in {i["ID"] for i in listed}, listed
        assert any(i["ID"] == image_id and i["Name"] == name for i in listed)

        shown = osc_flat(osc_json("image", "show", image_id))
        assert_uploaded(shown, payload, name)
        assert shown["visibility"] in ("private", "shared")

        run("openstack", "image", "set", "--property", "a=b", "--tag", "t", image_id)
        shown = osc_flat(osc_json("image", "show", image_id))
        assert shown.get("a") == "b", shown
        assert "t" in as_list(shown["tags"]), shown["tags"]
        assert shown["checksum"] == payload.md5

        out = tmp_path / "saved.raw"
        run("openstack", "image", "save", "--file", str(out), image_id)
        assert file_digest(out, "sha256") == payload.sha256

        run("openstack", "image", "delete", image_id)
        image_id = None
        gone = run("openstack", "image", "show", created["id"], check=False)
        assert gone.returncode != 0
        assert created["id"] not in {i["ID"] for i in osc_json("image", "list")}
    finally:
        if image_id:
            run("openstack", "image", "delete", image_id, check=False)


# --- openstacksdk ----------------------------------------------------------------------------

@pytest.fixture
def sdk():
    import openstack

    conn = openstack.connect(
        auth_url=os.environ["OS_AUTH_URL"],
        username=os.environ["OS_USERNAME"],
        password=os.environ["OS_PASSWORD"],
        project_name=os.environ["OS_PROJECT_NAME"],
        user_domain_name=os.environ["OS_USER_DOMAIN_NAME"],
        project_domain_name=os.environ["OS_PROJECT_DOMAIN_NAME"],
        region_name=os.environ["OS_REGION_NAME"],
        interface=os.environ["OS_INTERFACE"],
        identity_api_version="3",
        load_yaml_config=False,
        load_envvars=False,
    )
    yield conn
    conn.close()


def sdk_fields(image):
    fields = {
        "name": image.name,
        "status": image.status,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "size": image.size,
        "checksum": image.checksum,
        "os_hash_algo": image.hash_algo,
        "os_hash_value": image.hash_value,
    }
    return fields


def test_openstacksdk_image_flow(sdk, payload, tmp_path):
    from openstack import exceptions

    name = unique_name("sdk")
    # validate_checksum: the SDK hashes the file, stores md5/sha256 as owner_specified.*
    # properties and compares them with the checksum the server computed.
    image = sdk.image.create_image(name=name, filename=str(payload.path), disk_format="raw",
                                   container_format="bare", allow_duplicates=True,
                                   validate_checksum=True)
    image_id = image.id
    try:
        fetched = sdk.image.get_image(image_id)
        assert_uploaded(sdk_fields(fetched), payload, name)
        assert fetched.properties.get("owner_specified.openstack.md5") == payload.md5
        assert fetched.properties.get("owner_specified.openstack.sha256") == payload.sha256

        assert image_id in {i.id for i in sdk.image.images()}
        assert [i.id for i in sdk.image.images(name=name)] == [image_id]

        sdk.image.update_image(image_id, a="b")
        sdk.image.add_tag(image_id, "t")
        fetched = sdk.image.get_image(image_id)
        assert fetched.properties.get("a") == "b", fetched.properties
        assert "t" in fetched.tags
        assert fetched.checksum == payload.md5

        out = tmp_path / "downloaded.raw"
        sdk.image.download_image(image_id, output=str(out))
        assert file_digest(out, "sha256") == payload.sha256

        sdk.image.delete_image(image_id)
        image_id = None
        with pytest.raises(exceptions.NotFoundException):
            sdk.image.get_image(image.id)
    finally:
        if image_id:
            sdk.image.delete_image(image_id, ignore_missing=True)


# --- glanceclient ----------------------------------------------------------------------------

def parse_glance_table(text):
    """Parses glance's `| Property | Value |` table; long values wrap onto rows with no key."""
    fields, key = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells == ["Property", "Value"]:
            continue
        if cells[0]:
            key = cells[0]
            fields[key] = cells[1]
        elif key:
            fields[key] += cells[1]
    return fields


def parse_glance_list(text):
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] != "ID":
                rows.append(cells)
    return rows


def test_glanceclient_image_flow(payload, tmp_path):
    name = unique_name("glance")
    created = parse_glance_table(run(
        "glance", "image-create", "--name", name, "--disk-format", "raw",
        "--container-format", "bare", "--property", "a=b", "--file", str(payload.path)).stdout)
    image_id = created["id"]
    try:
        assert_uploaded(created, payload, name)
        assert created.get("a") == "b"

        listed = parse_glance_list(run("glance", "image-list").stdout)
        assert [image_id, name] in listed, listed

        out = tmp_path / "downloaded.raw"
        run("glance", "image-download", "--file", str(out), image_id)
        assert file_digest(out, "sha256") == payload.sha256

        shown = parse_glance_table(run("glance", "image-show", image_id).stdout)
        assert_uploaded(shown, payload, name)

        run("glance", "image-delete", image_id)
        image_id = None
        assert run("glance", "image-show", created["id"], check=False).returncode != 0
    finally:
        if image_id:
            run("glance", "image-delete", image_id, check=False)


def test_token_issue_and_catalog():
    token = osc_json("token", "issue")
    assert token["id"]
    assert token["project_id"]
    assert token["user_id"]
    services = {s["Type"] for s in osc_json("catalog", "list")}
    assert {"identity", "image"} <= services, services


@pytest.fixture(autouse=True)
def _cwd(tmp_path):
    # Keeps CLIs from finding a clouds.yaml or other stray files in the repo.
    old = Path.cwd()
    os.chdir(tmp_path)
    yield
    os.chdir(old)

"""Drives every operation of huaweicloudsdkims 3.1.219 against a fresh `ims serve` with AK/SK
signatures, asserting results: images through both dialects, tags, members across projects, job
lifecycles, copies that share data, quotas, and the refusals (auth, other projects' images,
malformed bodies) in the error bodies the SDK parses."""

import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkims.v2 import *  # noqa: F401,F403 (the SDK's request models)

from conftest import CROSS_REGION_CAP, REGION_A, REGION_B, make_client

RAW = bytes(range(256)) * 4096  # 1 MiB of image data


def wait_job(client, job_id, timeout=30):
    """Polls show_job_progress until the job ends; at most one identical request per second
    (a repeated signature within one second is a replay to the server)."""
    deadline = time.time() + timeout
    while True:
        job = client.show_job_progress(ShowJobProgressRequest(job_id=job_id))
        if job.status in ("SUCCESS", "FAIL"):
            return job
        assert job.status in ("INIT", "RUNNING"), job.status
        assert time.time() < deadline, f"job {job_id} still {job.status}"
        time.sleep(1.05)


def expect_error(fn, status, code=None):
    with pytest.raises(ClientRequestException) as info:
        fn()
    e = info.value
    assert e.status_code == status, (e.status_code, e.error_code, e.error_msg)
    if code:
        assert e.error_code == code, (e.error_code, e.error_msg)
    assert e.request_id
    return e


def new_image(node, client, account, name, os_version="Ubuntu 22.04 server 64bit", data=RAW):
    body = GlanceCreateImageMetadataRequestBody(
        os_version=os_version, container_format="bare", disk_format="raw", min_disk=40,
        min_ram=1024, name=name, protected=False, visibility="private")
    created = client.glance_create_image_metadata(GlanceCreateImageMetadataRequest(body=body))
    if data is not None:
        node.upload(account, created.id, data)
    return created


def listed(client, **query):
    return client.list_images(ListImagesRequest(**query)).images


def test_versions(alpha):
    versions = alpha.list_versions(ListVersionsRequest()).versions
    assert versions and all(v.id and v.status for v in versions)
    shown = alpha.show_version(ShowVersionRequest(version="v2"))
    assert shown.versions and shown.versions[0].links


def test_glance_dialect_image_lifecycle(node, alpha):
    created = new_image(node, alpha, "alpha", f"glance-{uuid.uuid4().hex[:6]}", data=None)
    assert created.status == "queued"
    assert (created.os_version, created.platform, created.os_type, created.os_bit) == \
        ("Ubuntu 22.04 server 64bit", "Ubuntu", "Linux", "64")
    assert created.imagetype == "private" and created.isregistered == "true"
    node.upload("alpha", created.id, RAW)
    shown = alpha.glance_show_image(GlanceShowImageRequest(image_id=created.id))
    assert shown.status == "active" and shown.size == len(RAW)
    assert shown.checksum == hashlib.md5(RAW).hexdigest()
    page = alpha.glance_list_images(GlanceListImagesRequest(name=created.name, limit=5))
    assert [i.id for i in page.images] == [created.id]
    renamed = alpha.glance_update_image(GlanceUpdateImageRequest(
        image_id=created.id,
        body=[GlanceUpdateImageRequestBody(op="replace", path="/name", value="glance-renamed")]))
    assert renamed.name == "glance-renamed"
    alpha.glance_create_tag(GlanceCreateTagRequest(image_id=created.id, tag="golden"))
    assert "golden" in alpha.glance_show_image(GlanceShowImageRequest(image_id=created.id)).tags
    alpha.glance_delete_tag(GlanceDeleteTagRequest(image_id=created.id, tag="golden"))
    assert "golden" not in alpha.glance_show_image(GlanceShowImageRequest(image_id=created.id)).tags
    # The same image through the IMS dialect.
    ims = listed(alpha, id=created.id)
    assert len(ims) == 1 and ims[0].name == "glance-renamed"
    assert ims[0].image_size == str(len(RAW)) and ims[0].imagetype == "private"
    alpha.glance_delete_image(GlanceDeleteImageRequest(image_id=created.id))
    expect_error(lambda: alpha.glance_show_image(GlanceShowImageRequest(image_id=created.id)), 404)


def test_glance_schemas(alpha):
    assert alpha.glance_show_image_schemas(GlanceShowImageSchemasRequest()).name == "image"
    assert alpha.glance_list_image_schemas(GlanceListImageSchemasRequest()).name == "images"
    assert alpha.glance_show_image_member_schemas(GlanceShowImageMemberSchemasRequest()).name == "member"
    assert alpha.glance_list_image_member_schemas(GlanceListImageMemberSchemasRequest()).name == "members"


def test_glance_members_across_projects(node, alpha, beta):
    image = new_image(node, alpha, "alpha", "glance-shared")
    beta_project = node.accounts["beta"]["project_id"]
    alpha.glance_update_image(GlanceUpdateImageRequest(
        image_id=image.id,
        body=[GlanceUpdateImageRequestBody(op="replace", path="/visibility", value="shared")]))
    member = alpha.glance_add_image_member(GlanceAddImageMemberRequest(
        image_id=image.id, body=GlanceAddImageMemberRequestBody(member=beta_project)))
    assert member.status == "pending" and member.member_id == beta_project
    members = alpha.glance_list_image_members(GlanceListImageMembersRequest(image_id=image.id))
    assert [m.member_id for m in members.members] == [beta_project]
    answered = beta.glance_update_image_member(GlanceUpdateImageMemberRequest(
        image_id=image.id, member_id=beta_project,
        body=GlanceUpdateImageMemberRequestBody(status="accepted")))
    assert answered.status == "accepted"
    shown = alpha.glance_show_image_member(GlanceShowImageMemberRequest(
        image_id=image.id, member_id=beta_project))
    assert shown.status == "accepted"
    alpha.glance_delete_image_member(GlanceDeleteImageMemberRequest(
        image_id=image.id, member_id=beta_project))
    expect_error(lambda: beta.glance_show_image(GlanceShowImageRequest(image_id=image.id)), 404)


def test_list_images_filters_sort_and_pages(node, alpha):
    names = [f"page-{i}-{uuid.uuid4().hex[:4]}" for i in range(3)]
    ids = [new_image(node, alpha, "alpha", n, os_version="CentOS 7.6 64bit").id for n in names]
    got = listed(alpha, imagetype="private", platform="CentOS", sort_key="name", sort_dir="asc",
                 limit=500)
    ours = [i for i in got if i.id in ids]
    assert [i.name for i in ours] == sorted(names)
    for i in ours:
        assert (i.os_type, i.os_bit, i.platform, i.isregistered) == ("Linux", "64", "CentOS", "true")
        assert i.status == "active" and i.virtual_env_type == "FusionCompute"
    first = alpha.list_images(ListImagesRequest(platform="CentOS", sort_key="name", sort_dir="asc",
                                                limit=1))
    assert len(first.images) == 1 and first.page_info.next_marker == first.images[0].id
    second = listed(alpha, platform="CentOS", sort_key="name", sort_dir="asc", limit=1,
                    marker=first.images[0].id)
    assert second[0].name > first.images[0].name
    assert listed(alpha, platform="CentOS", os_type="Windows") == []
    e = expect_error(lambda: listed(alpha, imagetype="nonsense"), 400, "IMG.0024" if False else None)
    assert e.error_code.startswith("IMG.")


def test_update_image(node, alpha):
    image = new_image(node, alpha, "alpha", "to-update")
    updated = alpha.update_image(UpdateImageRequest(image_id=image.id, body=[
        UpdateImageRequestBody(op="replace", path="/name", value="updated-name"),
        UpdateImageRequestBody(op="add", path="/description", value="a description"),
    ]))
    assert updated.name == "updated-name" and updated.description == "a description"
    e = expect_error(lambda: alpha.update_image(UpdateImageRequest(image_id=image.id, body=[
        UpdateImageRequestBody(op="replace", path="/__os_type", value="Windows")])), 403)
    assert e.error_code.startswith("IMG.")


def test_tags(node, alpha, gamma):
    project = node.accounts["alpha"]["project_id"]
    image = new_image(node, alpha, "alpha", "tagged").id
    alpha.add_image_tag(AddImageTagRequest(image_id=image, body=AddImageTagRequestBody(
        tag=TagKeyValue(key="env", value="prod"))))
    alpha.batch_add_or_delete_tags(BatchAddOrDeleteTagsRequest(image_id=image, body=
        BatchAddOrDeleteTagsRequestBody(action="create", tags=[
            ResourceTag(key="team", value="core"), ResourceTag(key="tmp", value="")])))
    tags = alpha.list_image_tags(ListImageTagsRequest(image_id=image)).tags
    assert {(t.key, t.value) for t in tags} == {("env", "prod"), ("team", "core"), ("tmp", "")}
    alpha.batch_add_or_delete_tags(BatchAddOrDeleteTagsRequest(image_id=image, body=
        BatchAddOrDeleteTagsRequestBody(action="delete", tags=[ResourceTag(key="tmp", value="")])))
    alpha.create_or_update_tags(CreateOrUpdateTagsRequest(body=AddOrUpdateTagsRequestBody(
        image_id=image, tag="env.staging")))
    alpha.create_or_update_tags(CreateOrUpdateTagsRequest(body=AddOrUpdateTagsRequestBody(
        image_id=image, image_tag=ImageTag(key="owner", value="ops"))))
    tags = {(t.key, t.value) for t in alpha.list_image_tags(ListImageTagsRequest(image_id=image)).tags}
    assert tags == {("env", "staging"), ("team", "core"), ("owner", "ops")}
    all_tags = alpha.list_images_tags(ListImagesTagsRequest()).tags
    assert {"staging"} <= set(next(t.values for t in all_tags if t.key == "env"))
    assert "env.staging" in alpha.list_tags(ListTagsRequest(id=image)).tags
    by_tags = alpha.list_image_by_tags(ListImageByTagsRequest(body=ListImageByTagsRequestBody(
        action="filter", tags=[Tags(key="env", values=["staging"])], limit="10", offset="0")))
    assert [r.resource_id for r in by_tags.resources] == [image] and by_tags.total_count == 1
    count = alpha.list_image_by_tags(ListImageByTagsRequest(body=ListImageByTagsRequestBody(
        action="count", tags=[Tags(key="team", values=[])])))
    assert count.total_count >= 1
    none = alpha.list_image_by_tags(ListImageByTagsRequest(body=ListImageByTagsRequestBody(
        action="count", tags=[Tags(key="env", values=["staging"])],
        not_tags_any=[Tags(key="owner", values=["ops"])])))
    assert none.total_count == 0
    alpha.delete_image_tag(DeleteImageTagRequest(image_id=image, key="owner"))
    alpha.batch_delete_tags(BatchDeleteTagsRequest(image_id=image, body=BatchDeleteTagsRequestBody(
        tags=[ResourceTag(key="team", value="core")])))
    tags = {(t.key, t.value) for t in alpha.list_image_tags(ListImageTagsRequest(image_id=image)).tags}
    assert tags == {("env", "staging")}
    time.sleep(1.05)  # the same DELETE within the same second would be a replay
    expect_error(lambda: alpha.delete_image_tag(DeleteImageTagRequest(image_id=image, key="owner")), 404)
    # At most 10 tags per image.
    alpha.batch_add_or_delete_tags(BatchAddOrDeleteTagsRequest(image_id=image, body=
        BatchAddOrDeleteTagsRequestBody(action="create",
                                        tags=[ResourceTag(key=f"k{i}", value="v") for i in range(9)])))
    e = expect_error(lambda: alpha.add_image_tag(AddImageTagRequest(image_id=image, body=
        AddImageTagRequestBody(tag=TagKeyValue(key="eleventh", value="v")))), 400)
    assert e.error_code.startswith("IMG.")
    expect_error(lambda: alpha.add_image_tag(AddImageTagRequest(image_id=image, body=
        AddImageTagRequestBody(tag=TagKeyValue(key="bad=key", value="v")))), 400)
    # Another project's image: not found, and its tags untouched.
    expect_error(lambda: gamma.list_image_tags(ListImageTagsRequest(image_id=image)), 404)


def test_members_jobs_across_two_projects(node, alpha, beta):
    beta_project = node.accounts["beta"]["project_id"]
    image = new_image(node, alpha, "alpha", "to-share").id
    job_id = alpha.batch_add_members(BatchAddMembersRequest(body=BatchAddMembersRequestBody(
        images=[image], projects=[beta_project]))).job_id
    assert len(job_id) == 32
    job = wait_job(alpha, job_id)
    assert job.status == "SUCCESS" and job.job_type == "imsAddImageMembersJob"
    shown = alpha.show_job(ShowJobRequest(job_id=job_id))
    assert [(r.image_id, r.project_id) for r in shown.entities.results] == [(image, beta_project)]
    members = alpha.list_image_members(ListImageMembersRequest(image_id=image)).members
    assert [(m.member_id, m.status) for m in members] == [(beta_project, "pending")]
    member = alpha.show_image_member(ShowImageMemberRequest(image_id=image, member_id=beta_project))
    assert member.status == "pending"
    # The recipient does not see it before accepting.
    assert image not in [i.id for i in listed(beta, imagetype="shared")]
    job = wait_job(beta, beta.batch_update_members(BatchUpdateMembersRequest(
        body=BatchUpdateMembersRequestBody(images=[image], project_id=beta_project,
                                           status="accepted"))).job_id)
    assert job.status == "SUCCESS" and job.job_type == "imsUpdateImageMembersJob"
    seen = [i for i in listed(beta, imagetype="shared") if i.id == image]
    assert len(seen) == 1 and seen[0].imagetype == "shared"
    # The recipient can copy it into its own project.
    copy_job = wait_job(beta, beta.copy_image_in_region(CopyImageInRegionRequest(
        image_id=image, body=CopyImageInRegionRequestBody(name="copied-by-beta"))).job_id)
    assert copy_job.status == "SUCCESS", copy_job.fail_reason
    assert node.download("beta", copy_job.entities.image_id) == RAW
    # Accepting for another project is refused.
    job = wait_job(alpha, alpha.batch_delete_members(BatchDeleteMembersRequest(
        body=BatchAddMembersRequestBody(images=[image], projects=[beta_project]))).job_id)
    assert job.status == "SUCCESS" and job.job_type == "imsDelImageMembersJob"
    assert alpha.list_image_members(ListImageMembersRequest(image_id=image)).members == []
    # Queued (not active) images cannot be shared.
    queued = new_image(node, alpha, "alpha", "queued", data=None).id
    expect_error(lambda: alpha.batch_add_members(BatchAddMembersRequest(body=BatchAddMembersRequestBody(
        images=[queued], projects=[beta_project]))), 400)
    # Beta cannot share alpha's image.
    expect_error(lambda: beta.batch_add_members(BatchAddMembersRequest(body=BatchAddMembersRequestBody(
        images=[image], projects=[beta_project]))), 404)


def test_copy_in_region_shares_data(node, alpha):
    source = new_image(node, alpha, "alpha", "copy-source").id
    results = []
    for op, req in (("copy_image_in_region", CopyImageInRegionRequest),
                    ("copy_image_in_region_in_safe_mode", CopyImageInRegionInSafeModeRequest)):
        job_id = getattr(alpha, op)(req(image_id=source, body=CopyImageInRegionRequestBody(
            name=f"copy-{op[-4:]}", description="copied"))).job_id
        job = wait_job(alpha, job_id)
        assert job.status == "SUCCESS" and job.job_type == "imsCopyImageInRegionJob", job.fail_reason
        results.append(job.entities.image_id)
    for copy in results:
        info = listed(alpha, id=copy)[0]
        assert info.originalimagename == source and info.description == "copied"
        assert info.status == "active" and info.image_size == str(len(RAW))
    alpha.glance_delete_image(GlanceDeleteImageRequest(image_id=source))
    # The copies keep their (shared) data after the source is gone.
    assert node.download("alpha", results[0]) == RAW
    expect_error(lambda: alpha.copy_image_in_region(CopyImageInRegionRequest(
        image_id=results[0], body=CopyImageInRegionRequestBody(name="x", cmk_id="kms-key"))), 400)


def test_jobs_both_queries(node, alpha):
    image = new_image(node, alpha, "alpha", "job-src").id
    job_id = alpha.copy_image_in_region(CopyImageInRegionRequest(
        image_id=image, body=CopyImageInRegionRequestBody(name="job-copy"))).job_id
    progress = wait_job(alpha, job_id)
    job = alpha.show_job(ShowJobRequest(job_id=job_id))
    assert job.job_id == progress.job_id == job_id
    assert job.status == progress.status == "SUCCESS"
    assert job.begin_time.endswith("Z") and job.end_time >= job.begin_time
    assert job.entities.image_name == "job-copy" and job.entities.image_id
    assert job.fail_reason is None and job.error_code is None
    e = expect_error(lambda: alpha.show_job_progress(ShowJobProgressRequest(job_id="0" * 32)), 404)
    assert e.error_code.startswith("IMG.")


def test_quota(node, gamma):
    quota = gamma.show_image_quota(ShowImageQuotaRequest()).quotas.resources[0]
    assert (quota.type, quota.quota) == ("image", 30)
    assert quota.used == 0
    src = new_image(node, gamma, "gamma", "quota-src").id
    assert gamma.show_image_quota(ShowImageQuotaRequest()).quotas.resources[0].used == 1
    for i in range(29):
        new_image(node, gamma, "gamma", f"filler-{i}", data=None)
    e = expect_error(lambda: gamma.copy_image_in_region(CopyImageInRegionRequest(
        image_id=src, body=CopyImageInRegionRequestBody(name="over-quota"))), 400)
    assert "quota" in e.error_msg
    assert gamma.show_image_quota(ShowImageQuotaRequest()).quotas.resources[0].used == 30


def test_os_versions(alpha):
    groups = alpha.list_os_versions(ListOsVersionsRequest()).body
    by_platform = {g.platform: g.version_list for g in groups}
    assert "Ubuntu" in by_platform and "CentOS" in by_platform
    centos = {v.os_version for v in by_platform["CentOS"]}
    assert "CentOS 7.9 64bit" in centos
    v = next(v for v in by_platform["CentOS"] if v.os_version == "CentOS 7.9 64bit")
    assert (v.os_bit, v.os_type, v.os_version_key) == (64, "Linux", "CentOS 7.9 64bit")
    uefi = alpha.list_os_versions(ListOsVersionsRequest(tag="uefi")).body
    uefi_versions = {v.os_version for g in uefi for v in g.version_list}
    assert uefi_versions and uefi_versions < {v.os_version for g in groups for v in g.version_list}


# --- buckets (the Garage the test command starts) --------------------------------------------

DISK_MIB = 32  # virtual size of the test disk
ZVHD_CHECK = Path(__file__).resolve().parents[2] / "crates/ims-diskfmt/tests/zvhd_check.py"


class Bucket:
    """The user bucket through boto3, every key under one prefix of this run."""

    def __init__(self, s3):
        import boto3
        from botocore.config import Config
        self.client = boto3.client(
            "s3", endpoint_url=s3["endpoint"], region_name=s3["region"],
            aws_access_key_id=s3["access_key"], aws_secret_access_key=s3["secret_key"],
            config=Config(s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
        self.name = s3["user_bucket"]
        self.prefix = f"ims-sdk-{uuid.uuid4().hex[:8]}"

    def url(self, name):
        """IMS's `bucket:object` for `name`."""
        return f"{self.name}:{self.prefix}/{name}"

    def put(self, name, data: bytes):
        self.client.put_object(Bucket=self.name, Key=f"{self.prefix}/{name}", Body=data)

    def get(self, name) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=f"{self.prefix}/{name}")["Body"].read()

    def names(self):
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=self.prefix + "/")
        return sorted(o["Key"][len(self.prefix) + 1:] for o in listed.get("Contents", []))


def run(*args):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert out.returncode == 0, f"{args}: {out.stdout} {out.stderr}"
    return out.stdout


def ims_img(node, *args):
    return run(node.binary, "img", *args)


@pytest.fixture(scope="session")
def bucket(s3):
    if not s3:
        pytest.skip("IMS_SKIP_S3=1: no S3 server")
    return Bucket(s3)


@pytest.fixture(scope="session")
def disks(node, bucket, tmp_path_factory):
    """A 32 MiB disk (data, zero blocks and a zero tail) as raw, qcow2, VMDK, VHD and ZVHD2
    files, each uploaded to the bucket as disk.<ext>; returns {ext: (path, bytes)}."""
    work = tmp_path_factory.mktemp("disks")
    block = 64 << 10
    chunks = []
    for i in range(DISK_MIB * (1 << 20) // block):
        if i % 3 == 0 or i >= (DISK_MIB - 8) * (1 << 20) // block:
            chunks.append(bytes(block))
        else:
            chunks.append(hashlib.sha256(str(i).encode()).digest() * (block // 32))
    raw = work / "disk.raw"
    raw.write_bytes(b"".join(chunks))
    files = {"raw": raw}
    for ext, fmt, opts in (("qcow2", "qcow2", []), ("vmdk", "vmdk", []),
                           ("vhd", "vpc", ["-o", "force_size=on"])):
        files[ext] = work / f"disk.{ext}"
        run("qemu-img", "convert", "-f", "raw", "-O", fmt, *opts, raw, files[ext])
    files["zvhd2"] = work / "disk.zvhd2"
    ims_img(node, "convert", "-f", "raw", "-O", "zvhd2", raw, files["zvhd2"])
    out = {}
    for ext, path in files.items():
        data = path.read_bytes()
        bucket.put(f"disk.{ext}", data)
        out[ext] = (path, data)
    return out


def wait_bucket_job(client, job_id, job_type):
    job = wait_job(client, job_id, timeout=180)
    assert job.job_type == job_type
    return job


def assert_imported(node, client, account, job, name, data, disk_format, os_version=None):
    """The job made one active image of the object: its bytes, size, format and OS fields."""
    assert job.status == "SUCCESS", job.fail_reason
    image_id = job.entities.image_id
    [image] = listed(client, id=image_id)
    assert (image.name, image.status, image.disk_format) == (name, "active", disk_format)
    assert image.image_size == str(len(data)) and image.checksum == hashlib.md5(data).hexdigest()
    assert image.imagetype == "private"
    if os_version:
        assert image.os_version == os_version
        assert (image.platform, image.os_type, image.os_bit) == ("CentOS", "Linux", "64")
    assert node.download(account, image_id) == data
    return image


def test_import_from_bucket(node, delta, bucket, disks):
    """create_image / import_image_quick from bucket objects: active images with the object's
    data, size, detected format and the OS fields of os_version."""
    os_version = "CentOS 7.9 64bit"
    for op, req, ext in (("create_image", CreateImageRequest, "qcow2"),
                         ("create_image_in_safe_mode", CreateImageInSafeModeRequest, "vhd")):
        name = f"imported-{ext}"
        job = wait_bucket_job(delta, getattr(delta, op)(req(body=CreateImageRequestBody(
            name=name, image_url=bucket.url(f"disk.{ext}"), min_disk=40, os_version=os_version,
            image_tags=[TagKeyValue(key="src", value=ext)]))).job_id, "imsImportImageJob")
        image = assert_imported(node, delta, "delta", job, name, disks[ext][1], ext, os_version)
        assert image.min_disk == 40 and image.virtual_env_type == "FusionCompute"
        tags = delta.list_image_tags(ListImageTagsRequest(image_id=image.id)).tags
        assert [(t.key, t.value) for t in tags] == [("src", ext)]
    for op, req, ext in (("import_image_quick", ImportImageQuickRequest, "zvhd2"),
                         ("import_image_quick_in_safe_mode", ImportImageQuickInSafeModeRequest, "raw")):
        name = f"quick-{ext}"
        job = wait_bucket_job(delta, getattr(delta, op)(req(body=QuickImportImageByFileRequestBody(
            name=name, os_version=os_version, image_url=bucket.url(f"disk.{ext}"),
            min_disk=40))).job_id, "imsImportImageJob")
        assert_imported(node, delta, "delta", job, name, disks[ext][1], ext, os_version)


def test_data_images_from_bucket(node, delta, bucket, disks):
    for op, req, ext in (("create_data_image", CreateDataImageRequest, "qcow2"),
                         ("create_data_image_in_safe_mode", CreateDataImageInSafeModeRequest, "vmdk")):
        name = f"data-{ext}"
        job = wait_bucket_job(delta, getattr(delta, op)(req(body=CreateDataImageRequestBody(
            name=name, image_url=bucket.url(f"disk.{ext}"), min_disk=40, os_type="Linux"))).job_id,
            "imsImportDataImageJob")
        image = assert_imported(node, delta, "delta", job, name, disks[ext][1], ext)
        assert image.virtual_env_type == "DataImage" and image.min_disk == 40


def test_register_image_from_bucket(node, delta, bucket, disks):
    queued = new_image(node, delta, "delta", "to-register", os_version="CentOS 7.9 64bit",
                       data=None).id
    job = wait_bucket_job(delta, delta.register_image(RegisterImageRequest(
        image_id=queued, body=RegisterImageRequestBody(image_url=bucket.url("disk.vmdk")))).job_id,
        "imsNativeImportImageJob")
    assert job.entities.image_id == queued
    image = assert_imported(node, delta, "delta", job, "to-register", disks["vmdk"][1], "vmdk",
                            "CentOS 7.9 64bit")
    shown = delta.glance_show_image(GlanceShowImageRequest(image_id=image.id))
    assert shown.virtual_size == DISK_MIB << 20


def test_export_to_bucket_in_every_format(node, delta, bucket, disks, tmp_path):
    """export_image writes each format the SDK allows; the files read back (qemu-img for VMDK,
    VHD and QCOW2, `ims img` for ZVHD and ZVHD2, which qemu-img cannot read) equal the source."""
    raw = disks["raw"][0]
    job = wait_bucket_job(delta, delta.create_image(CreateImageRequest(body=CreateImageRequestBody(
        name="to-export", image_url=bucket.url("disk.qcow2"), min_disk=40,
        os_version="CentOS 7.9 64bit"))).job_id, "imsImportImageJob")
    assert job.status == "SUCCESS", job.fail_reason
    image = job.entities.image_id
    formats = [("vmdk", "vmdk", "qemu"), ("vhd", "vpc", "qemu"), ("qcow2", "qcow2", "qemu"),
               ("zvhd", "zvhd", "ims"), ("zvhd2", "zvhd2", "ims")]
    for i, (fmt, reader, tool) in enumerate(formats):
        op, req = (("export_image", ExportImageRequest) if i % 2 == 0 else
                   ("export_image_in_safe_mode", ExportImageInSafeModeRequest))
        job = wait_bucket_job(delta, getattr(delta, op)(req(image_id=image, body=ExportImageRequestBody(
            bucket_url=bucket.url(f"out.{fmt}"), file_format=fmt))).job_id, "imsNativeExportImageJob")
        assert job.status == "SUCCESS", (fmt, job.fail_reason)
        out = tmp_path / f"out.{fmt}"
        out.write_bytes(bucket.get(f"out.{fmt}"))
        if tool == "qemu":
            info = json.loads(run("qemu-img", "info", "--output=json", "-f", reader, out))
            if reader != "vpc":
                run("qemu-img", "check", "-f", reader, out)
            run("qemu-img", "compare", "-f", "raw", "-F", reader, raw, out)
        else:
            info = json.loads(ims_img(node, "info", "--output=json", out))
            assert info["format"] == fmt, info
            ims_img(node, "check", "-f", reader, out)
            ims_img(node, "compare", "-f", "raw", "-F", reader, raw, out)
            # An independent reader (standard library + zstd): the disk's SHA-256 is the source's.
            digest = run("python3", ZVHD_CHECK, out).split()[0]
            assert digest == hashlib.sha256(raw.read_bytes()).hexdigest(), fmt
        assert info["virtual-size"] >= DISK_MIB << 20, (fmt, info)
    # A quick export writes the stored data as it is.
    job = wait_bucket_job(delta, delta.export_image(ExportImageRequest(image_id=image, body=ExportImageRequestBody(
        bucket_url=bucket.url("quick.qcow2"), is_quick_export=True))).job_id, "imsNativeExportImageJob")
    assert job.status == "SUCCESS", job.fail_reason
    assert bucket.get("quick.qcow2") == disks["qcow2"][1]
    assert {f"out.{f}" for f, _, _ in formats} | {"quick.qcow2"} <= set(bucket.names())


def test_bucket_refusals(node, delta, gamma, bucket, disks, tmp_path):
    """Seed tables 5-1 and 5-5 through the SDK: refused calls answer IMS error codes at once;
    what is only known from the file fails the job with one, and leaves no image."""
    def failed_job(job_id, job_type, code, words):
        job = wait_bucket_job(delta, job_id, job_type)
        assert job.status == "FAIL" and job.error_code == code, (job.error_code, job.fail_reason)
        assert words in job.fail_reason, job.fail_reason
        return job

    # Disk size limits: 40–1024 GB (system), 40–2048 GB (data), 1–1024 GB (quick import).
    for body in (CreateImageRequestBody(name="small", image_url=bucket.url("disk.qcow2"), min_disk=20,
                                        os_version="CentOS 7.9 64bit"),
                 CreateImageRequestBody(name="big", image_url=bucket.url("disk.qcow2"), min_disk=1025,
                                        os_version="CentOS 7.9 64bit")):
        expect_error(lambda: delta.create_image(CreateImageRequest(body=body)), 400, "IMG.0001")
    expect_error(lambda: delta.create_data_image(CreateDataImageRequest(body=CreateDataImageRequestBody(
        name="data", image_url=bucket.url("disk.qcow2"), min_disk=4096))), 400, "IMG.0001")
    expect_error(lambda: delta.import_image_quick(ImportImageQuickRequest(body=QuickImportImageByFileRequestBody(
        name="quick", os_version="CentOS 7.9 64bit", image_url=bucket.url("disk.raw"),
        min_disk=1025))), 400, "IMG.0001")
    expect_error(lambda: delta.create_image(CreateImageRequest(body=CreateImageRequestBody(
        name="no-colon", image_url="disk.qcow2", min_disk=40))), 400, "IMG.0001")
    # Known only from the file: a quick import of qcow2, a data disk larger than min_disk, an
    # object that does not exist, content that is not the declared format.
    failed_job(delta.import_image_quick(ImportImageQuickRequest(body=QuickImportImageByFileRequestBody(
        name="quick-qcow2", os_version="CentOS 7.9 64bit", image_url=bucket.url("disk.qcow2"),
        min_disk=40))).job_id, "imsImportImageJob", "IMG.0001", "RAW or ZVHD2")
    big = tmp_path / "big.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", big, "50G")
    bucket.put("big-data.qcow2", big.read_bytes())
    failed_job(delta.create_data_image(CreateDataImageRequest(body=CreateDataImageRequestBody(
        name="too-big-data", image_url=bucket.url("big-data.qcow2"), min_disk=40))).job_id,
        "imsImportDataImageJob", "IMG.0001", "does not fit")
    failed_job(delta.create_image(CreateImageRequest(body=CreateImageRequestBody(
        name="missing", image_url=bucket.url("no-such.qcow2"), min_disk=40,
        os_version="CentOS 7.9 64bit"))).job_id, "imsImportImageJob", "IMG.0404", "does not exist")
    bucket.put("disguised.qcow2", disks["vhd"][1])
    job = wait_bucket_job(delta, delta.create_image(CreateImageRequest(body=CreateImageRequestBody(
        name="disguised", image_url=bucket.url("disguised.qcow2"), min_disk=40,
        os_version="CentOS 7.9 64bit"))).job_id, "imsImportImageJob")
    assert job.status == "FAIL" and job.error_code.startswith("IMG.")
    for name in ("quick-qcow2", "too-big-data", "missing", "disguised"):
        assert listed(delta, name=name) == [], name

    # Table 5-5: what cannot be exported.
    queued = new_image(node, delta, "delta", "queued-export", data=None).id
    active = new_image(node, delta, "delta", "active-export").id
    iso_dir = tmp_path / "iso"
    iso_dir.mkdir()
    (iso_dir / "readme.txt").write_text("an ISO image\n")
    iso = tmp_path / "disc.iso"
    run("genisoimage", "-quiet", "-o", iso, iso_dir)
    body = GlanceCreateImageMetadataRequestBody(
        os_version="CentOS 7.9 64bit", container_format="bare", disk_format="iso", min_disk=40,
        name="an-iso", visibility="private")
    iso_image = delta.glance_create_image_metadata(GlanceCreateImageMetadataRequest(body=body)).id
    node.upload("delta", iso_image, iso.read_bytes())
    for image, body, code, words in (
            (active, ExportImageRequestBody(bucket_url=bucket.url("x.iso"), file_format="iso"),
             "IMG.0001", "cannot be exported"),
            (active, ExportImageRequestBody(bucket_url=bucket.url("x.raw"), file_format="raw"),
             "IMG.0001", "cannot be exported"),
            (active, ExportImageRequestBody(bucket_url=bucket.url("x.qcow2"), file_format="qcow2",
                                            is_quick_export=True), "IMG.0001", "quick export"),
            (active, ExportImageRequestBody(bucket_url="no-colon", file_format="qcow2"),
             "IMG.0001", "bucket:object"),
            (queued, ExportImageRequestBody(bucket_url=bucket.url("q.qcow2"), file_format="qcow2"),
             "IMG.0001", "Only active"),
            (iso_image, ExportImageRequestBody(bucket_url=bucket.url("i.qcow2"), file_format="qcow2"),
             "IMG.0001", "ISO")):
        e = expect_error(lambda: delta.export_image(ExportImageRequest(image_id=image, body=body)),
                         400, code)
        assert words in e.error_msg, e.error_msg
    # Another project's image does not exist for the caller.
    expect_error(lambda: gamma.export_image(ExportImageRequest(image_id=active, body=ExportImageRequestBody(
        bucket_url=bucket.url("stolen.qcow2"), file_format="qcow2"))), 404, "IMG.0404")
    assert not {"x.iso", "x.raw", "x.qcow2", "q.qcow2", "i.qcow2", "stolen.qcow2"} & set(bucket.names())


def test_compute_dependent_operations_answer_as_ims(alpha):
    server = str(uuid.uuid4())
    e = expect_error(lambda: alpha.create_image(CreateImageRequest(body=CreateImageRequestBody(
        name="from-ecs", instance_id=server))), 400)
    assert server in e.error_msg and "does not exist" in e.error_msg
    e = expect_error(lambda: alpha.create_image_in_safe_mode(CreateImageInSafeModeRequest(
        body=CreateImageRequestBody(name="from-volume", volume_id=server, os_version="CentOS 7.9 64bit"))), 400)
    assert "does not exist" in e.error_msg
    e = expect_error(lambda: alpha.create_whole_image(CreateWholeImageRequest(body=CreateWholeImageRequestBody(
        name="whole", backup_id=server, whole_image_type="CSBS"))), 400)
    assert "backup" in e.error_msg
    expect_error(lambda: alpha.create_whole_image(CreateWholeImageRequest(body=CreateWholeImageRequestBody(
        name="whole", instance_id=server))), 400)
    e = expect_error(lambda: alpha.create_image(CreateImageRequest(body=CreateImageRequestBody(
        name="enc", image_url="images:d.qcow2", min_disk=40, cmk_id="key-1"))), 400)
    assert "KMS" in e.error_msg


# --- a peer region (a second `ims serve`) ------------------------------------------------------

def test_copy_cross_region(node, region_b, delta, dest):
    """copy_image_cross_region to region B: the job succeeds and the copy is active in B's
    project `dest` with the same bytes and checksums; the seed's refusals answer IMS codes."""
    data = bytes(range(256)) * 8192  # 2 MiB
    source = new_image(node, delta, "delta", "xregion-src", data=data).id
    job_id = delta.copy_image_cross_region(CopyImageCrossRegionRequest(
        image_id=source, body=CopyImageCrossRegionRequestBody(
            name="far-copy", description="to B", region=REGION_B, project_name="dest",
            agency_name="ims_admin"))).job_id
    job = wait_job(delta, job_id, timeout=120)
    assert job.status == "SUCCESS" and job.job_type == "imsCrossRegionCopyImageJob", job.fail_reason
    shown = delta.show_job(ShowJobRequest(job_id=job_id))
    assert shown.status == "SUCCESS" and shown.entities.image_id == job.entities.image_id
    target = job.entities.image_id
    copy = dest.glance_show_image(GlanceShowImageRequest(image_id=target))
    original = delta.glance_show_image(GlanceShowImageRequest(image_id=source))
    assert (copy.status, copy.name, copy.size) == ("active", "far-copy", len(data))
    assert copy.checksum == original.checksum == hashlib.md5(data).hexdigest()
    assert region_b.show("dest", target)["os_hash_value"] == node.show("delta", source)["os_hash_value"] \
        == hashlib.sha512(data).hexdigest()
    [in_b] = listed(dest, id=target)
    assert in_b.imagetype == "private" and in_b.description == "to B"
    assert in_b.os_version == "Ubuntu 22.04 server 64bit"
    assert region_b.download("dest", target) == data
    # The peer's project and region must be the configured ones; this region is not a peer.
    for body, words in ((CopyImageCrossRegionRequestBody(name="x", region="region-c", project_name="dest",
                                                         agency_name="ims_admin"), "region-c"),
                        (CopyImageCrossRegionRequestBody(name="x", region=REGION_B, project_name="other",
                                                         agency_name="ims_admin"), "other"),
                        (CopyImageCrossRegionRequestBody(name="x", region=REGION_A, project_name="dest",
                                                         agency_name="ims_admin"), REGION_A)):
        e = expect_error(lambda: delta.copy_image_cross_region(CopyImageCrossRegionRequest(
            image_id=source, body=body)), 400, "IMG.0001")
        assert words in e.error_msg, e.error_msg
    # Table 5-4: at most the size cap (8 MiB in this deployment).
    big = new_image(node, delta, "delta", "xregion-big", data=bytes(CROSS_REGION_CAP + 1)).id
    e = expect_error(lambda: delta.copy_image_cross_region(CopyImageCrossRegionRequest(
        image_id=big, body=CopyImageCrossRegionRequestBody(
            name="too-big", region=REGION_B, project_name="dest", agency_name="ims_admin"))),
        400, "IMG.0414")
    assert str(CROSS_REGION_CAP) in e.error_msg


# --- refusals the SDK must be able to parse -------------------------------------------------

def signed(node, account, method, path, body=b"", sk=None, date=None, query=None):
    a = node.accounts[account]
    headers = {"Content-Type": "application/json;charset=utf-8" if body else "application/json",
               "X-Project-Id": a["project_id"], "User-Agent": "ims-sdk-tests"}
    if date:
        headers["X-Sdk-Date"] = date
    request = SdkRequest(method=method, schema="http", host=f"127.0.0.1:{node.port}",
                         resource_path=path, uri=path, query_params=query or [],
                         header_params=headers, body=body)
    Signer(BasicCredentials(a["ak"], sk or a["sk"], a["project_id"])).sign(request)
    return request


def send(node, request):
    qs = "&".join(f"{k}={v}" for k, v in (request.query_params or []))
    url = f"{node.url}{request.uri}" + (f"?{qs}" if qs else "")
    req = urllib.request.Request(url, data=request.body or None, method=request.method,
                                 headers=request.header_params)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_wrong_secret_key_is_refused(node):
    bad = make_client(node, "alpha", sk="not-the-secret-key-at-all-000000000000000")
    e = expect_error(lambda: bad.list_images(ListImagesRequest(limit=1)), 401, "APIGW.0301")
    assert "signature" in e.error_msg


def test_skewed_date_is_refused(node, alpha):
    e = expect_error(lambda: alpha.list_images(ListImagesRequest(limit=1, x_sdk_date="20200101T000000Z")),
                     401, "APIGW.0301")
    assert "seconds" in e.error_msg


def test_replayed_change_is_refused(node, alpha):
    image = new_image(node, alpha, "alpha", "replayed").id
    request = signed(node, "alpha", "PUT", "/v1/cloudimages/tags",
                     body=json.dumps({"image_id": image, "tag": "replay.once"}).encode())
    status, _ = send(node, request)
    assert status == 204
    status, body = send(node, request)
    assert status == 401 and body["error_code"] == "APIGW.0301" and "replay" in body["error_msg"]
    # Reads are idempotent: the same signed GET may be sent again within the skew.
    read = signed(node, "alpha", "GET", "/v1/cloudimages/quota")
    assert send(node, read)[0] == 200 and send(node, read)[0] == 200


def test_tampered_body_is_refused(node):
    request = signed(node, "alpha", "PUT", "/v1/cloudimages/tags",
                     body=json.dumps({"image_id": str(uuid.uuid4()), "tag": "a.b"}).encode())
    request.body = json.dumps({"image_id": str(uuid.uuid4()), "tag": "a.c"}).encode()
    status, body = send(node, request)
    assert status == 401 and body["error_code"] == "APIGW.0301"


def test_malformed_body_gets_ims_error(node):
    status, body = send(node, signed(node, "alpha", "PUT", "/v1/cloudimages/tags", body=b"{not json"))
    assert status == 400 and body["error"]["code"] == "IMG.0001"
    status, body = send(node, signed(node, "alpha", "POST", "/v1/cloudimages/members",
                                     body=b'{"images": "not-a-list"}'))
    assert status == 400 and body["error"]["code"] == "IMG.0001"


def test_other_projects_images_are_not_found(node, alpha, beta):
    image = new_image(node, alpha, "alpha", "alpha-only").id
    e = expect_error(lambda: beta.update_image(UpdateImageRequest(image_id=image, body=[
        UpdateImageRequestBody(op="replace", path="/name", value="stolen")])), 404)
    assert e.error_code == "IMG.0404"
    expect_error(lambda: beta.copy_image_in_region(CopyImageInRegionRequest(
        image_id=image, body=CopyImageInRegionRequestBody(name="stolen"))), 404)
    assert listed(beta, id=image) == []
    # A path naming another project is refused.
    beta_project = node.accounts["beta"]["project_id"]
    status, body = send(node, signed(node, "alpha", "GET", f"/v2/{beta_project}/images/{image}/tags"))
    assert status == 403 and body["error"]["code"].startswith("IMG.")

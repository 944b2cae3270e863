#!/usr/bin/env bash
# End-to-end test of the `ims image` client against a real `ims serve`.
#
# Starts the server on a free port with a fresh data directory, drives every client command
# through it (create/upload, list, show, update, tags, sharing and member flows with a second
# project, download with sha256 comparison, delete), and stops the server.
#
# Usage: tests/cli/cli_e2e.sh            (builds target/release/ims first)
#        IMS_BIN=path/to/ims tests/cli/cli_e2e.sh   (uses that binary, no build)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${IMS_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -p ims-cli) || { echo "FAIL: build" >&2; exit 1; }
    IMS_BIN="$ROOT/target/release/ims"
fi
[[ -x "$IMS_BIN" ]] || { echo "FAIL: no binary at $IMS_BIN" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ims-cli-e2e.XXXXXX")"
DATA="$WORK/data"
SERVER_PID=""
PASSED=0

cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    if [[ -s "$WORK/server.log" ]]; then
        echo "--- last server output ---" >&2
        tail -n 20 "$WORK/server.log" >&2
    fi
    echo "$PASSED passed, 1 failed"
    exit 1
}
pass() { PASSED=$((PASSED + 1)); echo "ok: $*"; }

# run DESC CMD...: runs CMD, keeping stdout in $OUT and stderr in $ERR; fails unless it exits 0.
run() {
    local desc="$1"; shift
    "$@" >"$WORK/out" 2>"$WORK/err"
    local rc=$?
    OUT="$(cat "$WORK/out")"; ERR="$(cat "$WORK/err")"
    [[ $rc -eq 0 ]] || fail "$desc: exit $rc (want 0): $ERR"
}
# expect_rc RC DESC CMD...: fails unless CMD exits with RC and, when RC != 0, says why on stderr.
expect_rc() {
    local want="$1" desc="$2"; shift 2
    "$@" >"$WORK/out" 2>"$WORK/err"
    local rc=$?
    OUT="$(cat "$WORK/out")"; ERR="$(cat "$WORK/err")"
    [[ $rc -eq $want ]] || fail "$desc: exit $rc (want $want); stderr: $ERR"
    if [[ $want -ne 0 ]]; then
        [[ "$ERR" == error:* ]] || fail "$desc: stderr should start with 'error:', got: $ERR"
        [[ "$ERR" != *panicked* && "$ERR" != *RUST_BACKTRACE* ]] || fail "$desc: panicked: $ERR"
    fi
    pass "$desc"
}
assert_eq() { [[ "$1" == "$2" ]] || fail "$3: got '$1', want '$2'"; pass "$3"; }
assert_contains() { [[ "$1" == *"$2"* ]] || fail "$3: '$2' not found in: $1"; pass "$3"; }
assert_not_contains() { [[ "$1" != *"$2"* ]] || fail "$3: '$2' unexpectedly found in: $1"; pass "$3"; }

# json EXPR: evaluates a Python expression over the JSON document on stdin, bound to `d`.
json() { python3 -c "import json,sys; d=json.load(sys.stdin); v=($1); print(v if isinstance(v,str) else json.dumps(v))"; }

# --- server -------------------------------------------------------------------------------------
ADMIN_PASSWORD="e2e-admin-$RANDOM$RANDOM"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
IMS_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$IMS_BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
    >"$WORK/server.log" 2>&1 </dev/null &
SERVER_PID=$!
READY=""
for _ in $(seq 1 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "server exited before listening"
    if grep -q "ims listening on $BASE" "$WORK/server.log"; then READY=1; break; fi
    sleep 0.1
done
[[ -n "$READY" ]] || fail "server did not print 'ims listening on $BASE' within 30 s"
pass "server listening at $BASE"

export OS_AUTH_URL="$BASE/identity"   # no version: the client must append /v3
export OS_USERNAME=admin OS_PASSWORD="$ADMIN_PASSWORD" OS_PROJECT_NAME=admin
export OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default
unset OS_CLOUD OS_TOKEN OS_IMAGE_URL OS_PROJECT_ID OS_REGION_NAME OS_INTERFACE
ims() { "$IMS_BIN" image "$@"; }
as_u2() { OS_USERNAME=u2 OS_PASSWORD=x OS_PROJECT_NAME=p2 "$IMS_BIN" image "$@"; }

# --- second project -----------------------------------------------------------------------------
run "admin project create p2" "$IMS_BIN" admin --data-dir "$DATA" project create p2
run "admin user create u2" "$IMS_BIN" admin --data-dir "$DATA" user create u2 --password x --project p2 \
    --role member
P2_ID="$(curl -sS -X POST "$BASE/identity/v3/auth/tokens" -H 'Content-Type: application/json' \
    -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"u2","domain":{"name":"Default"},"password":"x"}}},"scope":{"project":{"name":"p2","domain":{"name":"Default"}}}}}' |
    json 'd["token"]["project"]["id"]')" || fail "u2 cannot get a token for p2"
[[ -n "$P2_ID" ]] || fail "no project id for p2"
pass "u2 authenticates to p2 ($P2_ID)"

# --- create with upload -------------------------------------------------------------------------
head -c $((20 * 1024 * 1024)) /dev/urandom >"$WORK/img.raw"
SHA="$(sha256sum <"$WORK/img.raw" | cut -d' ' -f1)"
MD5="$(md5sum <"$WORK/img.raw" | cut -d' ' -f1)"
run "create --file" ims create e2e-img --file "$WORK/img.raw" --disk-format raw --container-format bare \
    --visibility private --property os_distro=cirros --tag t0 --min-ram 64 --format json
IMG="$(json 'd["id"]' <<<"$OUT")"
assert_eq "$(json 'd["status"]' <<<"$OUT")" active "created image is active"
assert_eq "$(json 'd["size"]' <<<"$OUT")" $((20 * 1024 * 1024)) "created image has the file's size"
assert_eq "$(json 'd["checksum"]' <<<"$OUT")" "$MD5" "created image checksum is the file's md5"
assert_eq "$(json 'd["os_distro"]' <<<"$OUT")" cirros "property set at create"
assert_eq "$(json 'd["tags"]' <<<"$OUT")" '["t0"]' "tag set at create"
assert_eq "$(json 'd["min_ram"]' <<<"$OUT")" 64 "min_ram set at create"
assert_eq "$(json 'd["visibility"]' <<<"$OUT")" private "visibility set at create"

# --- create then upload -------------------------------------------------------------------------
run "create without data" ims create e2e-upload --format json
UP="$(json 'd["id"]' <<<"$OUT")"
assert_eq "$(json 'd["status"]' <<<"$OUT")" queued "image without data is queued"
run "upload --file" ims upload e2e-upload --file "$WORK/img.raw" --format json
assert_eq "$(json 'd["status"]' <<<"$OUT")" active "uploaded image is active"
assert_eq "$(json 'd["checksum"]' <<<"$OUT")" "$MD5" "uploaded image checksum"

# --- list ---------------------------------------------------------------------------------------
run "list (table)" ims list
assert_contains "$OUT" "$IMG" "table list shows the image"
assert_contains "$OUT" "| ID " "table list has a header"
run "list --long" ims list --long
assert_contains "$OUT" "Disk Format" "long list has more columns"
run "list --format csv" ims list --format csv
assert_eq "$(head -n 1 <<<"$OUT")" "Name,ID,Status,OS Type,OS,Image Type,Disk Capacity (GB),Encrypted,Created At" \
    "csv header: the console's columns"
assert_contains "$OUT" "e2e-img,$IMG,active," "csv row"
# The same rows as the console's export (GET /v2/cloudimages/export.csv), line ends aside.
CLI_CSV="$OUT"
ADMIN_TOKEN="$(curl -sSi -X POST "$BASE/identity/v3/auth/tokens" -H 'Content-Type: application/json' \
    -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"name\":\"Default\"},\"password\":\"$ADMIN_PASSWORD\"}}},\"scope\":{\"project\":{\"name\":\"admin\",\"domain\":{\"name\":\"Default\"}}}}}" |
    awk 'tolower($1)=="x-subject-token:"{print $2}' | tr -d '\r')"
[[ -n "$ADMIN_TOKEN" ]] || fail "no admin token"
CONSOLE_CSV="$(curl -sS "$BASE/v2/cloudimages/export.csv" -H "X-Auth-Token: $ADMIN_TOKEN" | tr -d '\r')"
assert_eq "$(sort <<<"$CLI_CSV")" "$(sort <<<"$CONSOLE_CSV")" "csv list = the console export's rows"
assert_eq "$(($(wc -l <<<"$CLI_CSV") - 1))" 2 "csv lists both images"
run "list --format json" ims list --format json
assert_contains "$(json '[i["id"] for i in d]' <<<"$OUT")" "$IMG" "json list holds the image"
run "list --name" ims list --name e2e-img --format json
assert_eq "$(json '[i["id"] for i in d]' <<<"$OUT")" "[\"$IMG\"]" "list filtered by name"
run "list --tag" ims list --tag t0 --format json
assert_eq "$(json '[i["id"] for i in d]' <<<"$OUT")" "[\"$IMG\"]" "list filtered by tag"
run "list --property" ims list --property os_distro=cirros --format json
assert_eq "$(json '[i["id"] for i in d]' <<<"$OUT")" "[\"$IMG\"]" "list filtered by property"
run "list --status" ims list --status queued --format json
assert_not_contains "$OUT" "$IMG" "status filter excludes active image"

# More images than the server's default page (25): listing must follow `next` links.
PAGE_IDS=()
for n in $(seq -w 1 27); do
    run "create page-$n" ims create "page-$n" --format json
    PAGE_IDS+=("$(json 'd["id"]' <<<"$OUT")")
done
run "list all pages" ims list --format csv
assert_eq "$(($(wc -l <<<"$OUT") - 1))" 29 "list follows next links to all 29 images"
run "list --limit 5" ims list --limit 5 --format json
assert_eq "$(json 'len(d)' <<<"$OUT")" 5 "list --limit returns one page"
run "list --sort name:asc" ims list --sort name:asc --format csv
assert_eq "$(sed -n 2p <<<"$OUT" | cut -d, -f1)" e2e-img "sorted list starts with e2e-img"
assert_eq "$(tail -n 1 <<<"$OUT" | cut -d, -f1)" page-27 "sorted list ends with page-27"
run "delete many" ims delete "${PAGE_IDS[@]}"
run "list after bulk delete" ims list --format csv
assert_eq "$(($(wc -l <<<"$OUT") - 1))" 2 "bulk delete removed 27 images"

# --- show ---------------------------------------------------------------------------------------
run "show by name" ims show e2e-img
assert_contains "$OUT" "| id " "show table has an id row"
assert_contains "$OUT" "$IMG" "show by name finds the image"
run "show by id" ims show "$IMG" --format json
assert_eq "$(json 'd["name"]' <<<"$OUT")" e2e-img "show by id"
expect_rc 1 "show unknown name fails" ims show no-such-image
assert_contains "$ERR" "no-such-image" "error names the missing image"
expect_rc 1 "show unknown id fails" ims show 00000000-0000-4000-8000-000000000000
run "create duplicate name" ims create e2e-upload
expect_rc 1 "ambiguous name is refused" ims show e2e-upload
assert_contains "$ERR" "More than one image" "ambiguity is explained"
DUP="$(ims list --name e2e-upload --format json | json '[i["id"] for i in d if i["id"] != "'"$UP"'"][0]')"
run "delete duplicate by id" ims delete "$DUP"

# --- update -------------------------------------------------------------------------------------
run "update" ims update e2e-img --name e2e-renamed --property k1=v1 --property k2=v2 --min-disk 2 \
    --protected --format json
assert_eq "$(json 'd["name"]' <<<"$OUT")" e2e-renamed "update renames"
assert_eq "$(json 'd["k1"]' <<<"$OUT")" v1 "update adds a property"
assert_eq "$(json 'd["min_disk"]' <<<"$OUT")" 2 "update sets min_disk"
assert_eq "$(json 'd["protected"]' <<<"$OUT")" true "update protects"
expect_rc 1 "delete protected image fails" ims delete e2e-renamed
run "update unprotect, remove property" ims update e2e-renamed --unprotected --remove-property k1 \
    --property k2=v2b --format json
assert_eq "$(json 'd["protected"]' <<<"$OUT")" false "update unprotects"
assert_eq "$(json '"k1" in d' <<<"$OUT")" false "update removes a property"
assert_eq "$(json 'd["k2"]' <<<"$OUT")" v2b "update overwrites a property"
expect_rc 1 "disk_format of an active image is immutable" ims update e2e-renamed --disk-format qcow2
expect_rc 2 "update with nothing to change is a usage error" ims update e2e-renamed
expect_rc 2 "malformed --property is a usage error" ims update e2e-renamed --property novalue

# --- tags ---------------------------------------------------------------------------------------
run "tag add" ims tag add e2e-renamed t1 t2
run "show tags" ims show "$IMG" --format json
assert_eq "$(json 'sorted(d["tags"])' <<<"$OUT")" '["t0", "t1", "t2"]' "tags added"
run "tag remove" ims tag remove e2e-renamed t1 t0
run "show tags again" ims show "$IMG" --format json
assert_eq "$(json 'sorted(d["tags"])' <<<"$OUT")" '["t2"]' "tags removed"
expect_rc 1 "removing an absent tag fails" ims tag remove "$IMG" never-there

# --- download -----------------------------------------------------------------------------------
run "download --file" ims download e2e-renamed --file "$WORK/down.raw"
assert_eq "$(sha256sum <"$WORK/down.raw" | cut -d' ' -f1)" "$SHA" "downloaded file matches (sha256)"
assert_eq "$(find "$WORK" -maxdepth 1 -name '.ims-download-*' | wc -l)" 0 "no temp files left behind"
"$IMS_BIN" image download "$IMG" >"$WORK/stdout.raw" 2>"$WORK/err" || fail "download to stdout: $(cat "$WORK/err")"
assert_eq "$(sha256sum <"$WORK/stdout.raw" | cut -d' ' -f1)" "$SHA" "download to stdout matches (sha256)"
run "create empty image" ims create e2e-empty --format json
EMPTY="$(json 'd["id"]' <<<"$OUT")"
expect_rc 1 "download of an image without data fails" ims download "$EMPTY" --file "$WORK/none.raw"
[[ ! -e "$WORK/none.raw" ]] || fail "failed download left a file"
pass "failed download leaves no file"

# --- sharing and members ------------------------------------------------------------------------
expect_rc 1 "p2 cannot see a private image" as_u2 show "$IMG"
run "share" ims share e2e-renamed "$P2_ID" --format json
assert_eq "$(json 'd["status"]' <<<"$OUT")" pending "share adds a pending member"
run "show after share" ims show "$IMG" --format json
assert_eq "$(json 'd["visibility"]' <<<"$OUT")" shared "share made the image shared"
run "member list" ims member list e2e-renamed
assert_contains "$OUT" "$P2_ID" "member list shows p2"
assert_contains "$OUT" "pending" "member list shows pending"
run "p2 list while pending" as_u2 list --format csv
assert_not_contains "$OUT" "$IMG" "pending image not in p2's default list"
run "p2 list pending" as_u2 list --visibility shared --member-status pending --format csv
assert_contains "$OUT" "$IMG" "pending image listed with --member-status pending"
expect_rc 1 "a member cannot add members" as_u2 member add "$IMG" some-other-project
run "p2 accepts" as_u2 member accept "$IMG" --format json
assert_eq "$(json 'd["status"]' <<<"$OUT")" accepted "member accepted"
run "p2 list after accept" as_u2 list --format csv
assert_contains "$OUT" "$IMG" "accepted image in p2's list"
run "p2 download" as_u2 download "$IMG" --file "$WORK/p2.raw"
assert_eq "$(sha256sum <"$WORK/p2.raw" | cut -d' ' -f1)" "$SHA" "p2's download matches (sha256)"
expect_rc 1 "p2 cannot delete the owner's image" as_u2 delete "$IMG"
run "p2 rejects" as_u2 member reject "$IMG" --format json
assert_eq "$(json 'd["status"]' <<<"$OUT")" rejected "member rejected"
run "p2 list after reject" as_u2 list --format csv
assert_not_contains "$OUT" "$IMG" "rejected image not in p2's list"
run "member remove" ims member remove "$IMG" "$P2_ID"
run "member list after remove" ims member list "$IMG" --format json
assert_eq "$OUT" "[]" "no members after remove"
run "member add" ims member add "$IMG" "$P2_ID" --format json
assert_eq "$(json 'd["member_id"]' <<<"$OUT")" "$P2_ID" "member add"
expect_rc 1 "duplicate member add fails" ims member add "$IMG" "$P2_ID"
run "member remove again" ims member remove "$IMG" "$P2_ID"

# --- auth errors --------------------------------------------------------------------------------
expect_rc 1 "wrong password fails" env OS_PASSWORD=wrong "$IMS_BIN" image list
expect_rc 2 "missing credentials is a usage error" env -u OS_AUTH_URL "$IMS_BIN" image list
cat >"$WORK/clouds.yaml" <<EOF
clouds:
  e2e:
    auth:
      auth_url: $BASE/identity/v3
      username: admin
      password: $ADMIN_PASSWORD
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
EOF
run "clouds.yaml profile" env -u OS_AUTH_URL -u OS_USERNAME -u OS_PASSWORD -u OS_PROJECT_NAME \
    OS_CLIENT_CONFIG_FILE="$WORK/clouds.yaml" "$IMS_BIN" image --os-cloud e2e show "$IMG" --format json
assert_eq "$(json 'd["id"]' <<<"$OUT")" "$IMG" "authenticated through clouds.yaml"

# --- delete -------------------------------------------------------------------------------------
run "delete" ims delete e2e-renamed "$UP" "$EMPTY"
expect_rc 1 "deleted image is gone" ims show "$IMG"
run "list after delete" ims list --format csv
assert_eq "$(wc -l <<<"$OUT")" 1 "nothing left but the csv header"

echo "$PASSED passed, 0 failed"

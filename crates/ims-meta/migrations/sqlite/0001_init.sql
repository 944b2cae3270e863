-- Initial schema (SQLite). Timestamps are BIGINT microseconds since the Unix epoch.
-- Text compares with BINARY collation: byte order, the same order the in-memory store uses.

CREATE TABLE images (
    id               TEXT    PRIMARY KEY NOT NULL,
    name             TEXT,
    status           TEXT    NOT NULL,
    visibility       TEXT    NOT NULL,
    protected        BOOLEAN NOT NULL,
    os_hidden        BOOLEAN NOT NULL,
    owner            TEXT,
    container_format TEXT,
    disk_format      TEXT,
    min_ram          BIGINT  NOT NULL,
    min_disk         BIGINT  NOT NULL,
    -- ImageData: all NULL, or all set (virtual_size may still be NULL).
    size             BIGINT,
    checksum         TEXT,
    os_hash_algo     TEXT,
    os_hash_value    TEXT,
    virtual_size     BIGINT,
    blob_key         TEXT,
    store            TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    deleted_at       BIGINT,
    revision         BIGINT  NOT NULL,
    -- Copies of image_tags / image_properties as JSON (array / object), rewritten with them, so
    -- a page of images is read without touching the child tables (they serve the filters).
    tags_json        TEXT    NOT NULL,
    properties_json  TEXT    NOT NULL
);

-- The default listing order (created_at desc, id desc) walks this index backwards. The trailing
-- columns let the scope and liveness checks run on index entries, so only listed rows are read.
CREATE INDEX images_created_at ON images (created_at, id, owner, visibility, status, os_hidden, deleted_at);
CREATE INDEX images_updated_at ON images (updated_at, id);
CREATE INDEX images_owner ON images (owner, created_at, id);
CREATE INDEX images_visibility ON images (visibility, created_at, id);
CREATE INDEX images_blob_key ON images (blob_key) WHERE blob_key IS NOT NULL;

CREATE TABLE image_tags (
    image_id TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    tag      TEXT NOT NULL,
    PRIMARY KEY (image_id, tag)
) WITHOUT ROWID;
CREATE INDEX image_tags_tag ON image_tags (tag, image_id);

CREATE TABLE image_properties (
    image_id TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (image_id, name)
) WITHOUT ROWID;
CREATE INDEX image_properties_name_value ON image_properties (name, value, image_id);

CREATE TABLE image_members (
    image_id   TEXT   NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    member_id  TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (image_id, member_id)
) WITHOUT ROWID;
CREATE INDEX image_members_member ON image_members (member_id, status, image_id);

CREATE TABLE projects (
    id        TEXT PRIMARY KEY NOT NULL,
    name      TEXT NOT NULL,
    domain_id TEXT NOT NULL,
    UNIQUE (domain_id, name)
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL,
    domain_id     TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    UNIQUE (domain_id, name)
);

-- No foreign keys: assignments are idempotent facts the identity service validates.
CREATE TABLE role_assignments (
    user_id    TEXT NOT NULL,
    project_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    PRIMARY KEY (user_id, project_id, role)
) WITHOUT ROWID;

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE revoked_tokens (
    audit_id   TEXT   PRIMARY KEY NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);

-- Initial schema (PostgreSQL). Timestamps are BIGINT microseconds since the Unix epoch.
-- Text columns use the "C" collation: byte order, the same order SQLite and the in-memory store use,
-- whatever the database's default locale.

CREATE TABLE images (
    id               TEXT COLLATE "C"    PRIMARY KEY NOT NULL,
    name             TEXT COLLATE "C",
    status           TEXT COLLATE "C"    NOT NULL,
    visibility       TEXT COLLATE "C"    NOT NULL,
    protected        BOOLEAN NOT NULL,
    os_hidden        BOOLEAN NOT NULL,
    owner            TEXT COLLATE "C",
    container_format TEXT COLLATE "C",
    disk_format      TEXT COLLATE "C",
    min_ram          BIGINT  NOT NULL,
    min_disk         BIGINT  NOT NULL,
    -- ImageData: all NULL, or all set (virtual_size may still be NULL).
    size             BIGINT,
    checksum         TEXT COLLATE "C",
    os_hash_algo     TEXT COLLATE "C",
    os_hash_value    TEXT COLLATE "C",
    virtual_size     BIGINT,
    blob_key         TEXT COLLATE "C",
    store            TEXT COLLATE "C",
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
    image_id TEXT COLLATE "C" NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    tag      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (image_id, tag)
);
CREATE INDEX image_tags_tag ON image_tags (tag, image_id);

CREATE TABLE image_properties (
    image_id TEXT COLLATE "C" NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    name     TEXT COLLATE "C" NOT NULL,
    value    TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (image_id, name)
);
CREATE INDEX image_properties_name_value ON image_properties (name, value, image_id);

CREATE TABLE image_members (
    image_id   TEXT COLLATE "C"   NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    member_id  TEXT COLLATE "C"   NOT NULL,
    status     TEXT COLLATE "C"   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (image_id, member_id)
);
CREATE INDEX image_members_member ON image_members (member_id, status, image_id);

CREATE TABLE projects (
    id        TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    name      TEXT COLLATE "C" NOT NULL,
    domain_id TEXT COLLATE "C" NOT NULL,
    UNIQUE (domain_id, name)
);

CREATE TABLE users (
    id            TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    name          TEXT COLLATE "C" NOT NULL,
    domain_id     TEXT COLLATE "C" NOT NULL,
    password_hash TEXT COLLATE "C" NOT NULL,
    UNIQUE (domain_id, name)
);

-- No foreign keys: assignments are idempotent facts the identity service validates.
CREATE TABLE role_assignments (
    user_id    TEXT COLLATE "C" NOT NULL,
    project_id TEXT COLLATE "C" NOT NULL,
    role       TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, project_id, role)
);

CREATE TABLE secrets (
    name  TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL
);

CREATE TABLE revoked_tokens (
    audit_id   TEXT COLLATE "C"   PRIMARY KEY NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);

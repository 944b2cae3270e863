-- Metadata definitions (Glance "metadefs"). One row per namespace: its own fields plus a JSON
-- document holding its properties, objects, tags and resource-type associations, written whole
-- under an optimistic `revision`. Timestamps are BIGINT microseconds since the Unix epoch.

CREATE TABLE metadef_namespaces (
    id           TEXT    COLLATE "C" PRIMARY KEY NOT NULL,
    namespace    TEXT    COLLATE "C" NOT NULL UNIQUE,
    display_name TEXT,
    description  TEXT,
    visibility   TEXT    NOT NULL,
    protected    BOOLEAN NOT NULL,
    owner        TEXT,
    contents     TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    revision     BIGINT  NOT NULL
);

CREATE TABLE metadef_resource_types (
    name       TEXT    COLLATE "C" PRIMARY KEY NOT NULL,
    protected  BOOLEAN NOT NULL,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);

-- Which built-in seed sets have been loaded, so a namespace an admin deleted stays deleted.
CREATE TABLE metadef_seeds (
    name       TEXT   COLLATE "C" PRIMARY KEY NOT NULL,
    applied_at BIGINT NOT NULL
);

-- The IMS API: access keys (AK/SK; the secret sealed by the service with a key kept outside the
-- database) and the records of IMS jobs. Timestamps are BIGINT microseconds since the epoch.

CREATE TABLE access_keys (
    access_key    TEXT   PRIMARY KEY NOT NULL,
    user_id       TEXT   NOT NULL,
    sealed_secret BLOB   NOT NULL,
    description   TEXT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX access_keys_by_user ON access_keys (user_id, created_at);

CREATE TABLE ims_job_records (
    id          TEXT   PRIMARY KEY NOT NULL,
    project_id  TEXT   NOT NULL,
    job_type    TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    begin_time  BIGINT NOT NULL,
    end_time    BIGINT,
    error_code  TEXT,
    fail_reason TEXT,
    entities    TEXT   NOT NULL
);

-- The durable job queue (crate ims-jobs). A worker claims a job by taking its lease
-- (lease_owner, lease_expires_at); a job whose lease expired is claimable again, so work a
-- crashed worker held resumes elsewhere from the state it last saved. Timestamps are BIGINT
-- microseconds since the Unix epoch; JSON documents are TEXT.

CREATE TABLE jobs (
    id               TEXT COLLATE "C"   PRIMARY KEY NOT NULL,
    kind             TEXT COLLATE "C"   NOT NULL,
    project          TEXT COLLATE "C"   NOT NULL,
    user_id          TEXT,
    image_id         TEXT COLLATE "C",
    parent_id        TEXT COLLATE "C",
    request_id       TEXT,
    payload          TEXT     NOT NULL,
    state            TEXT,
    status           TEXT     NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    not_before       BIGINT   NOT NULL,
    attempts         INTEGER  NOT NULL,
    max_attempts     INTEGER  NOT NULL,
    result           TEXT,
    fail_reason      TEXT,
    created_at       BIGINT   NOT NULL,
    updated_at       BIGINT   NOT NULL,
    expires_at       BIGINT
);

-- Claiming walks runnable jobs oldest first.
CREATE INDEX jobs_claim ON jobs (status, not_before, created_at);
CREATE INDEX jobs_project ON jobs (project, created_at);
CREATE INDEX jobs_image ON jobs (image_id);
CREATE INDEX jobs_parent ON jobs (parent_id);

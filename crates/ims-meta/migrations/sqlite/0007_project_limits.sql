-- Per-project limits (Glance's unified limits: image_size_total, image_stage_total,
-- image_count_total, image_count_uploading) that replace the configured defaults for one
-- project. `resource_limit` is in the resource's unit (MiB for sizes); -1 = unlimited.
CREATE TABLE project_limits (
    project_id     TEXT    NOT NULL,
    resource       TEXT    NOT NULL,
    resource_limit INTEGER NOT NULL,
    PRIMARY KEY (project_id, resource)
);

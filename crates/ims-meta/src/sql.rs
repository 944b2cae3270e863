//! `SqlStore`: the [`MetaStore`] over sqlx, for SQLite and PostgreSQL.
//!
//! Statements are written once, as text with `$N` placeholders (both dialects accept them) plus
//! a list of [`Arg`]s, and run by a `match` over the two pool types ([`on_pool!`]). Dialects
//! differ only in the migrations (`migrations/sqlite`, `migrations/postgres`: column types, and
//! PostgreSQL's `COLLATE "C"` so text sorts by bytes as in SQLite and the memory store) and in
//! [`unindexed`], a planner hint for SQLite.
//!
//! Listing reads one row per image: tags and properties are kept as JSON in `images` too
//! (rewritten with the child tables in one transaction), the child tables serve the filters.
//! Timestamps are BIGINT microseconds since the epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ims_domain::image::{ImageData, ImageLocation, LocationData};
use ims_domain::member::MemberStatus;
use ims_domain::query::{MatchField, MemberStatusFilter, TimeField, VisibilityFilter};
use ims_domain::{
    Image, ImageListQuery, ImageStatus, Limit, ListScope, Member, Project, QuotaResource, Role,
    SortDir, SortKey, User, Visibility, from_micros, to_micros,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::memory::{is_deleted, normalized_image};
use crate::{MetaError, MetaResult, MetaStore, ProjectUsage};

/// SQLite allows one writer at a time; more connections only help concurrent readers.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
/// How long an SQLite statement waits for another connection's write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Enough for a busy API node; PostgreSQL's default `max_connections` is 100.
const PG_MAX_CONNECTIONS: u32 = 16;
/// How long a request waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The [`MetaStore`] over SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: Pool,
}

/// The connection pool behind a [`SqlStore`], shared with stores that keep their own tables in
/// the same database and migration sequence (the metadef store, `ims-jobs`).
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool the store holds; the body is compiled once
/// per dialect.
macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Binds every [`Arg`] of `$args` to the sqlx query `$query`, in order.
macro_rules! bind_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(v) => query.bind(v.as_str()),
                Arg::OptText(v) => query.bind(v.as_deref()),
                Arg::Int(v) => query.bind(*v),
                Arg::OptInt(v) => query.bind(*v),
                Arg::Bool(v) => query.bind(*v),
                Arg::Bytes(v) => query.bind(v.as_slice()),
            };
        }
        query
    }};
}

/// A value bound to a `$N` placeholder.
#[derive(Debug, Clone)]
enum Arg {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// A statement under construction: SQL text whose placeholders number the collected args.
#[derive(Debug, Default)]
struct Stmt {
    sql: String,
    args: Vec<Arg>,
}

impl Stmt {
    fn new(sql: &str) -> Stmt {
        Stmt {
            sql: sql.to_owned(),
            args: Vec::new(),
        }
    }

    /// A statement with `args` bound to `$1..$n` as written in `sql`.
    fn with(sql: &str, args: Vec<Arg>) -> Stmt {
        Stmt {
            sql: sql.to_owned(),
            args,
        }
    }

    fn push(&mut self, sql: &str) -> &mut Stmt {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder for `arg`.
    fn bind(&mut self, arg: Arg) -> &mut Stmt {
        self.args.push(arg);
        let _ = write!(self.sql, "${}", self.args.len());
        self
    }

    /// Appends `(p1, p2, …)` for `args`; `(NULL)` when empty, which matches nothing.
    fn bind_list(&mut self, args: impl IntoIterator<Item = Arg>) -> &mut Stmt {
        self.sql.push('(');
        let mut empty = true;
        for (i, arg) in args.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.bind(arg);
            empty = false;
        }
        if empty {
            self.sql.push_str("NULL");
        }
        self.sql.push(')');
        self
    }
}

fn text(s: &str) -> Arg {
    Arg::Text(s.to_owned())
}

fn db_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> MetaError {
    move |source| MetaError::Database { op, source }
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

fn is_foreign_key_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_foreign_key_violation())
}

/// The few places where SQLite and PostgreSQL need different SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// `column` in a form SQLite's planner will not use an index for (PostgreSQL's planner weighs
/// costs itself). Used for the scope's OR of owner and visibility: as a multi-index OR SQLite
/// would collect and sort every visible image, where walking the sort index stops after a page.
fn unindexed(dialect: Dialect, column: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("+{column}"),
        Dialect::Postgres => column.to_owned(),
    }
}

/// `SELECT <one JSON array per image> AS image FROM images i`, decoded as an [`ImageRow`].
///
/// Why JSON: sqlx hands over each column value separately, and for a page of 100 images those
/// 2,400 values cost several times what SQLite spends finding the rows; one value per row does
/// not. Booleans go out as 0/1 so both dialects emit the same JSON.
fn image_select(dialect: Dialect) -> String {
    let columns = "i.id, i.name, i.status, i.visibility, \
         CASE WHEN i.protected THEN 1 ELSE 0 END, CASE WHEN i.os_hidden THEN 1 ELSE 0 END, i.owner, \
         i.container_format, i.disk_format, i.min_ram, i.min_disk, i.size, i.checksum, \
         i.os_hash_algo, i.os_hash_value, i.virtual_size, i.blob_key, i.created_at, \
         i.updated_at, i.deleted_at, i.revision";
    match dialect {
        Dialect::Sqlite => format!(
            "SELECT json_array({columns}, json(i.stores_json), json(i.tags_json), \
             json(i.properties_json), json(i.locations_json)) AS image FROM images i"
        ),
        Dialect::Postgres => format!(
            "SELECT json_build_array({columns}, i.stores_json::json, i.tags_json::json, \
             i.properties_json::json, i.locations_json::json)::text AS image FROM images i"
        ),
    }
}

/// One image as [`image_select`] returns it: a JSON array in the column order of `IMAGE_INSERT`,
/// except that the stores, like the tags and properties, come last as JSON.
#[derive(Debug, serde::Deserialize)]
struct ImageRow {
    id: String,
    name: Option<String>,
    status: String,
    visibility: String,
    protected: u8,
    os_hidden: u8,
    owner: Option<String>,
    container_format: Option<String>,
    disk_format: Option<String>,
    min_ram: i64,
    min_disk: i64,
    size: Option<i64>,
    checksum: Option<String>,
    os_hash_algo: Option<String>,
    os_hash_value: Option<String>,
    virtual_size: Option<i64>,
    blob_key: Option<String>,
    created_at: i64,
    updated_at: i64,
    deleted_at: Option<i64>,
    revision: i64,
    stores: Option<Vec<String>>,
    tags: BTreeSet<String>,
    properties: BTreeMap<String, String>,
    #[serde(default)]
    locations: Option<Vec<LocationRow>>,
}

/// One entry of `locations_json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LocationRow {
    url: String,
    metadata: serde_json::Value,
}

#[derive(Debug, sqlx::FromRow)]
struct MemberRow {
    image_id: String,
    member_id: String,
    status: String,
    created_at: i64,
    updated_at: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct ProjectRow {
    id: String,
    name: String,
    domain_id: String,
}

#[derive(Debug, sqlx::FromRow)]
struct UserRow {
    id: String,
    name: String,
    domain_id: String,
    password_hash: String,
}

#[derive(Debug, sqlx::FromRow)]
struct RoleRow {
    user_id: String,
    project_id: String,
    role: String,
}

fn corrupt(what: impl std::fmt::Display) -> MetaError {
    MetaError::CorruptRow(what.to_string())
}

fn parse_uuid(s: &str) -> MetaResult<uuid::Uuid> {
    uuid::Uuid::parse_str(s).map_err(|_| corrupt(format_args!("image id {s:?}")))
}

impl ImageRow {
    fn into_image(self) -> MetaResult<Image> {
        let id = parse_uuid(&self.id)?;
        let status = ImageStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format_args!("image {id}: status {:?}", self.status)))?;
        let visibility = Visibility::parse(&self.visibility)
            .ok_or_else(|| corrupt(format_args!("image {id}: visibility {:?}", self.visibility)))?;
        let mut location_data = None;
        let data = match (
            self.blob_key,
            self.stores,
            self.size,
            self.checksum,
            self.os_hash_algo,
            self.os_hash_value,
        ) {
            (None, None, None, None, None, None) => None,
            // Data only at external locations: a size, and the hashes that are known.
            (None, None, Some(size), checksum, os_hash_algo, os_hash_value) => {
                location_data = Some(LocationData {
                    size,
                    checksum,
                    os_hash_algo,
                    os_hash_value,
                    virtual_size: self.virtual_size,
                });
                None
            }
            (
                Some(blob_key),
                Some(stores),
                Some(size),
                Some(checksum),
                Some(os_hash_algo),
                Some(os_hash_value),
            ) if !stores.is_empty() => Some(ImageData {
                blob_key,
                stores,
                size,
                checksum,
                os_hash_algo,
                os_hash_value,
                virtual_size: self.virtual_size,
            }),
            _ => return Err(corrupt(format_args!("image {id}: data columns partly set"))),
        };
        Ok(Image {
            id,
            name: self.name,
            status,
            visibility,
            protected: self.protected != 0,
            os_hidden: self.os_hidden != 0,
            owner: self.owner,
            container_format: self.container_format,
            disk_format: self.disk_format,
            min_ram: self.min_ram,
            min_disk: self.min_disk,
            data,
            locations: self
                .locations
                .unwrap_or_default()
                .into_iter()
                .map(|l| ImageLocation {
                    url: l.url,
                    metadata: l.metadata.to_string(),
                })
                .collect(),
            location_data,
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
            deleted_at: self.deleted_at.map(from_micros),
            tags: self.tags,
            properties: self.properties,
            revision: self.revision,
        })
    }
}

impl MemberRow {
    fn into_member(self) -> MetaResult<Member> {
        let image_id = parse_uuid(&self.image_id)?;
        let status = MemberStatus::parse(&self.status).ok_or_else(|| {
            corrupt(format_args!(
                "member {} of image {image_id}: status {:?}",
                self.member_id, self.status
            ))
        })?;
        Ok(Member {
            image_id,
            member_id: self.member_id,
            status,
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
        })
    }
}

fn parse_role(s: &str) -> MetaResult<Role> {
    Role::parse(s).ok_or_else(|| corrupt(format_args!("role {s:?}")))
}

/// Binds [`image_args`]; [`image_select`] and [`ImageRow`] follow the same column order.
const IMAGE_INSERT: &str = "INSERT INTO images (id, name, status, visibility, protected, os_hidden, \
     owner, container_format, disk_format, min_ram, min_disk, size, checksum, os_hash_algo, \
     os_hash_value, virtual_size, blob_key, stores_json, created_at, updated_at, deleted_at, \
     revision, tags_json, properties_json, locations_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
     $20, $21, $22, $23, $24, $25)";

/// Rewrites every column but `id` from [`image_args`] (`$22` the new revision), if the stored
/// revision is `$26`.
const IMAGE_UPDATE: &str = "UPDATE images SET name = $2, status = $3, visibility = $4, \
     protected = $5, os_hidden = $6, owner = $7, container_format = $8, disk_format = $9, \
     min_ram = $10, min_disk = $11, size = $12, checksum = $13, os_hash_algo = $14, \
     os_hash_value = $15, virtual_size = $16, blob_key = $17, stores_json = $18, created_at = $19, \
     updated_at = $20, deleted_at = $21, revision = $22, tags_json = $23, properties_json = $24, \
     locations_json = $25 WHERE id = $1 AND revision = $26";

/// The 25 image columns as args, in `IMAGE_INSERT` order. The size, hashes and virtual size
/// come from the blob's data or, without a blob, from the external locations' data.
fn image_args(image: &Image, revision: i64) -> Vec<Arg> {
    let data = image.data.as_ref();
    let external = image.location_data.as_ref().filter(|_| data.is_none());
    let data_text = |f: fn(&ImageData) -> &String| Arg::OptText(data.map(|d| f(d).clone()));
    let hash_text = |f: fn(&ImageData) -> &String, g: fn(&LocationData) -> &Option<String>| {
        Arg::OptText(
            data.map(|d| f(d).clone())
                .or_else(|| external.and_then(|e| g(e).clone())),
        )
    };
    let locations = (!image.locations.is_empty()).then(|| {
        let rows: Vec<LocationRow> = image
            .locations
            .iter()
            .map(|l| LocationRow {
                url: l.url.clone(),
                metadata: serde_json::from_str(&l.metadata)
                    .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
            })
            .collect();
        json(&rows)
    });
    vec![
        Arg::Text(image.id.to_string()),
        Arg::OptText(image.name.clone()),
        text(image.status.as_str()),
        text(image.visibility.as_str()),
        Arg::Bool(image.protected),
        Arg::Bool(image.os_hidden),
        Arg::OptText(image.owner.clone()),
        Arg::OptText(image.container_format.clone()),
        Arg::OptText(image.disk_format.clone()),
        Arg::Int(image.min_ram),
        Arg::Int(image.min_disk),
        Arg::OptInt(data.map(|d| d.size).or(external.map(|e| e.size))),
        hash_text(|d| &d.checksum, |e| &e.checksum),
        hash_text(|d| &d.os_hash_algo, |e| &e.os_hash_algo),
        hash_text(|d| &d.os_hash_value, |e| &e.os_hash_value),
        Arg::OptInt(
            data.map(|d| d.virtual_size)
                .unwrap_or(external.and_then(|e| e.virtual_size)),
        ),
        data_text(|d| &d.blob_key),
        Arg::OptText(data.map(|d| json(&d.stores))),
        Arg::Int(to_micros(image.created_at)),
        Arg::Int(to_micros(image.updated_at)),
        Arg::OptInt(image.deleted_at.map(to_micros)),
        Arg::Int(revision),
        Arg::Text(json(&image.tags)),
        Arg::Text(json(&image.properties)),
        Arg::OptText(locations),
    ]
}

fn json(value: &impl serde::Serialize) -> String {
    // Sets and maps of strings always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

/// Inserts of the image's tags and properties (none when it has neither).
fn child_inserts(image: &Image) -> Vec<Stmt> {
    let id = image.id.to_string();
    let mut stmts = Vec::new();
    if !image.tags.is_empty() {
        let mut stmt = Stmt::new("INSERT INTO image_tags (image_id, tag) VALUES ");
        for (i, tag) in image.tags.iter().enumerate() {
            stmt.push(if i == 0 { "(" } else { ", (" });
            stmt.bind(text(&id)).push(", ").bind(text(tag)).push(")");
        }
        stmts.push(stmt);
    }
    if !image.properties.is_empty() {
        let mut stmt = Stmt::new("INSERT INTO image_properties (image_id, name, value) VALUES ");
        for (i, (name, value)) in image.properties.iter().enumerate() {
            stmt.push(if i == 0 { "(" } else { ", (" });
            stmt.bind(text(&id))
                .push(", ")
                .bind(text(name))
                .push(", ")
                .bind(text(value))
                .push(")");
        }
        stmts.push(stmt);
    }
    stmts
}

/// The SQL expression a sort key orders by; NULLs become `''` / `-1`, as in the memory store.
fn sort_expr(key: SortKey) -> &'static str {
    match key {
        SortKey::Name => "COALESCE(i.name, '')",
        SortKey::Status => "i.status",
        SortKey::ContainerFormat => "COALESCE(i.container_format, '')",
        SortKey::DiskFormat => "COALESCE(i.disk_format, '')",
        SortKey::Size => "COALESCE(i.size, -1)",
        SortKey::Id => "i.id",
        SortKey::CreatedAt => "i.created_at",
        SortKey::UpdatedAt => "i.updated_at",
    }
}

/// The marker's value of a sort key, under the same NULL convention as [`sort_expr`].
fn sort_value(key: SortKey, image: &Image) -> Arg {
    let or_empty = |v: &Option<String>| Arg::Text(v.clone().unwrap_or_default());
    match key {
        SortKey::Name => or_empty(&image.name),
        SortKey::Status => text(image.status.as_str()),
        SortKey::ContainerFormat => or_empty(&image.container_format),
        SortKey::DiskFormat => or_empty(&image.disk_format),
        SortKey::Size => Arg::Int(image.size().unwrap_or(-1)),
        SortKey::Id => Arg::Text(image.id.to_string()),
        SortKey::CreatedAt => Arg::Int(to_micros(image.created_at)),
        SortKey::UpdatedAt => Arg::Int(to_micros(image.updated_at)),
    }
}

fn match_column(field: MatchField) -> &'static str {
    match field {
        MatchField::Id => "i.id",
        MatchField::Name => "i.name",
        MatchField::Status => "i.status",
        MatchField::ContainerFormat => "i.container_format",
        MatchField::DiskFormat => "i.disk_format",
        MatchField::Owner => "i.owner",
        MatchField::Checksum => "i.checksum",
        MatchField::OsHashValue => "i.os_hash_value",
    }
}

/// Appends `AND rows strictly after the marker in the order of sort`. When every key runs the
/// same direction this is one row-value comparison, which an index on the keys can serve.
fn push_keyset(stmt: &mut Stmt, sort: &[(SortKey, SortDir)], marker: &Image) {
    let op = |dir: SortDir| if dir == SortDir::Asc { " > " } else { " < " };
    let first_dir = sort[0].1;
    if sort.iter().all(|(_, dir)| *dir == first_dir) {
        let exprs: Vec<&str> = sort.iter().map(|(k, _)| sort_expr(*k)).collect();
        stmt.push(" AND (")
            .push(&exprs.join(", "))
            .push(")")
            .push(op(first_dir));
        stmt.bind_list(sort.iter().map(|(k, _)| sort_value(*k, marker)));
        return;
    }
    stmt.push(" AND (");
    for i in 0..sort.len() {
        stmt.push(if i == 0 { "(" } else { " OR (" });
        for (key, _) in &sort[..i] {
            stmt.push(sort_expr(*key))
                .push(" = ")
                .bind(sort_value(*key, marker))
                .push(" AND ");
        }
        let (key, dir) = sort[i];
        stmt.push(sort_expr(key))
            .push(op(dir))
            .bind(sort_value(key, marker))
            .push(")");
    }
    stmt.push(")");
}

/// The page query for `query`, positioned after `marker` (already checked to be visible).
fn list_statement(dialect: Dialect, query: &ImageListQuery, marker: Option<&Image>) -> Stmt {
    let mut stmt = Stmt::new(&image_select(dialect));
    stmt.push(" WHERE i.deleted_at IS NULL AND i.status NOT IN ('deleted', 'killed')");
    match &query.scope {
        ListScope::All => {}
        ListScope::Project(project) => {
            let (owner, visibility) = (
                unindexed(dialect, "i.owner"),
                unindexed(dialect, "i.visibility"),
            );
            stmt.push(" AND (")
                .push(&owner)
                .push(" = ")
                .bind(text(project));
            stmt.push(" OR ")
                .push(&visibility)
                .push(" IN ('public', 'community') OR (");
            stmt.push(&visibility)
                .push(" = 'shared' AND EXISTS (SELECT 1 FROM image_members m ");
            stmt.push("WHERE m.image_id = i.id AND m.member_id = ")
                .bind(text(project));
            if let MemberStatusFilter::Only(status) = query.member_status {
                stmt.push(" AND m.status = ").bind(text(status.as_str()));
            }
            stmt.push(")))");
        }
    }
    match (query.visibility, &query.scope) {
        (None, ListScope::All) => {
            stmt.push(" AND i.visibility <> 'community'");
        }
        (None, ListScope::Project(project)) => {
            stmt.push(" AND (i.owner = ")
                .bind(text(project))
                .push(" OR i.visibility <> 'community')");
        }
        (Some(VisibilityFilter::All), _) => {}
        (Some(VisibilityFilter::Only(v)), _) => {
            stmt.push(" AND i.visibility = ").bind(text(v.as_str()));
        }
    }
    for (field, values) in &query.matches {
        stmt.push(" AND ").push(match_column(*field)).push(" IN ");
        stmt.bind_list(values.iter().map(|v| text(v)));
    }
    if let Some(protected) = query.protected {
        stmt.push(" AND i.protected = ").bind(Arg::Bool(protected));
    }
    if let Some(hidden) = query.os_hidden {
        stmt.push(" AND i.os_hidden = ").bind(Arg::Bool(hidden));
    }
    for (field, op, at) in &query.times {
        let column = match field {
            TimeField::CreatedAt => "i.created_at",
            TimeField::UpdatedAt => "i.updated_at",
        };
        stmt.push(" AND ")
            .push(column)
            .push(" ")
            .push(op.sql())
            .push(" ");
        stmt.bind(Arg::Int(to_micros(*at)));
    }
    if let Some(min) = query.size_min {
        stmt.push(" AND i.size >= ").bind(Arg::Int(min));
    }
    if let Some(max) = query.size_max {
        stmt.push(" AND i.size <= ").bind(Arg::Int(max));
    }
    for tag in &query.tags {
        stmt.push(" AND EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag = ");
        stmt.bind(text(tag)).push(")");
    }
    for (name, value) in &query.properties {
        stmt.push(
            " AND EXISTS (SELECT 1 FROM image_properties p WHERE p.image_id = i.id AND p.name = ",
        );
        stmt.bind(text(name))
            .push(" AND p.value = ")
            .bind(text(value))
            .push(")");
    }
    let sort = query.full_sort();
    if let Some(marker) = marker {
        push_keyset(&mut stmt, &sort, marker);
    }
    stmt.push(" ORDER BY ");
    for (i, (key, dir)) in sort.iter().enumerate() {
        if i > 0 {
            stmt.push(", ");
        }
        stmt.push(sort_expr(*key)).push(if *dir == SortDir::Asc {
            " ASC"
        } else {
            " DESC"
        });
    }
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
    stmt.push(" LIMIT ").bind(Arg::Int(limit));
    stmt
}

fn image_label(id: uuid::Uuid) -> String {
    format!("image {id}")
}

fn member_label(image_id: uuid::Uuid, member_id: &str) -> String {
    format!("member {member_id} of image {image_id}")
}

impl SqlStore {
    /// Connects to `url` (`sqlite:path`, `sqlite://path?mode=rwc`, `postgres://…`) and brings
    /// the schema up to date. An SQLite file is created if the URL does not say otherwise.
    pub async fn connect(url: &str) -> MetaResult<SqlStore> {
        let pool = if url.starts_with("sqlite:") {
            Pool::Sqlite(connect_sqlite(url).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Pool::Postgres(connect_postgres(url).await?)
        } else {
            let message = "database URL must start with sqlite: or postgres:";
            return Err(MetaError::Database {
                op: "connect",
                source: sqlx::Error::Configuration(message.into()),
            });
        };
        let store = SqlStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> MetaResult<()> {
        match &self.pool {
            Pool::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
            Pool::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
        }
        .map_err(MetaError::Migrating)
    }

    /// The pool, for stores that keep their own statements on the same database: the metadef
    /// store (`crate::metadefs`) and the job queue (`ims-jobs`).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Closes every pooled connection (SQLite checkpoints its WAL on the last close).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    async fn execute(&self, op: &'static str, stmt: Stmt) -> MetaResult<u64> {
        on_pool!(self, pool => {
            let result = bind_args!(sqlx::query(&stmt.sql), &stmt.args).execute(pool).await;
            result.map(|r| r.rows_affected()).map_err(db_error(op))
        })
    }

    /// Runs `stmts` in one transaction. If the first affects no row, rolls back and returns
    /// `Ok(false)`. A failing statement's error is returned raw, for the caller to classify.
    async fn write_tx(&self, stmts: Vec<Stmt>) -> Result<bool, sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (i, stmt) in stmts.iter().enumerate() {
                let done = bind_args!(sqlx::query(&stmt.sql), &stmt.args).execute(&mut *tx).await?;
                if i == 0 && done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Images selected by `stmt`, which starts with [`image_select`].
    async fn load_images(&self, op: &'static str, stmt: &Stmt) -> MetaResult<Vec<Image>> {
        let rows = on_pool!(self, pool => bind_args!(sqlx::query_scalar::<_, String>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error(op)))?;
        rows.iter()
            .map(|json| {
                let row: ImageRow = serde_json::from_str(json)
                    .map_err(|e| corrupt(format_args!("image row: {e}")))?;
                row.into_image()
            })
            .collect()
    }

    async fn image_by_id(&self, op: &'static str, id: uuid::Uuid) -> MetaResult<Option<Image>> {
        let mut stmt = Stmt::new(&image_select(self.dialect()));
        stmt.push(" WHERE i.id = ").bind(Arg::Text(id.to_string()));
        Ok(self.load_images(op, &stmt).await?.pop())
    }

    /// The marker image if it exists and `scope` may see it (as `get_image` would: shared
    /// images need a membership of any status); else `MarkerNotFound`.
    async fn visible_marker(&self, scope: &ListScope, id: uuid::Uuid) -> MetaResult<Image> {
        let marker = self
            .image_by_id("list_images", id)
            .await?
            .filter(|m| !is_deleted(m));
        let marker = marker.ok_or(MetaError::MarkerNotFound(id))?;
        let visible = match scope {
            ListScope::All => true,
            ListScope::Project(p) if marker.owner.as_deref() == Some(p.as_str()) => true,
            ListScope::Project(_)
                if matches!(
                    marker.visibility,
                    Visibility::Public | Visibility::Community
                ) =>
            {
                true
            }
            ListScope::Project(p) => {
                marker.visibility == Visibility::Shared && self.get_member(id, p).await?.is_some()
            }
        };
        if visible {
            Ok(marker)
        } else {
            Err(MetaError::MarkerNotFound(id))
        }
    }

    async fn fetch_projects(&self, op: &'static str, stmt: Stmt) -> MetaResult<Vec<Project>> {
        let rows = on_pool!(self, pool => bind_args!(sqlx::query_as::<_, ProjectRow>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error(op)))?;
        Ok(rows
            .into_iter()
            .map(|r| Project {
                id: r.id,
                name: r.name,
                domain_id: r.domain_id,
            })
            .collect())
    }

    async fn fetch_users(&self, op: &'static str, stmt: Stmt) -> MetaResult<Vec<User>> {
        let rows = on_pool!(self, pool => bind_args!(sqlx::query_as::<_, UserRow>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error(op)))?;
        Ok(rows
            .into_iter()
            .map(|r| User {
                id: r.id,
                name: r.name,
                domain_id: r.domain_id,
                password_hash: r.password_hash,
            })
            .collect())
    }

    async fn fetch_members(&self, op: &'static str, stmt: Stmt) -> MetaResult<Vec<Member>> {
        let rows = on_pool!(self, pool => bind_args!(sqlx::query_as::<_, MemberRow>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error(op)))?;
        rows.into_iter().map(MemberRow::into_member).collect()
    }

    async fn fetch_roles(
        &self,
        op: &'static str,
        stmt: Stmt,
    ) -> MetaResult<Vec<(String, String, Role)>> {
        let rows = on_pool!(self, pool => bind_args!(sqlx::query_as::<_, RoleRow>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error(op)))?;
        let mut roles = rows
            .into_iter()
            .map(|r| Ok((r.user_id, r.project_id, parse_role(&r.role)?)))
            .collect::<MetaResult<Vec<_>>>()?;
        // Roles are ordered by what they imply, not by name.
        roles.sort();
        Ok(roles)
    }

    async fn fetch_strings(&self, op: &'static str, stmt: Stmt) -> MetaResult<Vec<String>> {
        on_pool!(self, pool => bind_args!(sqlx::query_scalar::<_, String>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error(op)))
    }

    async fn fetch_bytes(&self, op: &'static str, stmt: Stmt) -> MetaResult<Vec<Vec<u8>>> {
        on_pool!(self, pool => bind_args!(sqlx::query_scalar::<_, Vec<u8>>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error(op)))
    }
}

async fn connect_sqlite(url: &str) -> MetaResult<SqlitePool> {
    let mut options = SqliteConnectOptions::from_str(url).map_err(db_error("connect"))?;
    if !url.contains("mode=") {
        options = options.create_if_missing(true);
    }
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed status change (e.g. `active`) survives power loss.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(db_error("connect"))
}

async fn connect_postgres(url: &str) -> MetaResult<PgPool> {
    let options = PgConnectOptions::from_str(url).map_err(db_error("connect"))?;
    PgPoolOptions::new()
        .max_connections(PG_MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(db_error("connect"))
}

#[async_trait]
impl MetaStore for SqlStore {
    async fn create_image(&self, image: &Image) -> MetaResult<()> {
        let mut stmts = vec![Stmt::with(IMAGE_INSERT, image_args(image, image.revision))];
        stmts.extend(child_inserts(image));
        match self.write_tx(stmts).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(MetaError::AlreadyExists(image_label(image.id)))
            }
            Err(e) => Err(MetaError::Database {
                op: "create_image",
                source: e,
            }),
        }
    }

    async fn get_image(&self, id: uuid::Uuid) -> MetaResult<Option<Image>> {
        self.image_by_id("get_image", id).await
    }

    async fn update_image(&self, image: &Image) -> MetaResult<Image> {
        let revision = image.revision + 1;
        let id = Arg::Text(image.id.to_string());
        let mut update = image_args(image, revision);
        update.push(Arg::Int(image.revision)); // $26
        let mut stmts = vec![
            Stmt::with(IMAGE_UPDATE, update),
            Stmt::with(
                "DELETE FROM image_tags WHERE image_id = $1",
                vec![id.clone()],
            ),
            Stmt::with("DELETE FROM image_properties WHERE image_id = $1", vec![id]),
        ];
        stmts.extend(child_inserts(image));
        let written = self
            .write_tx(stmts)
            .await
            .map_err(|source| MetaError::Database {
                op: "update_image",
                source,
            })?;
        if written {
            let mut stored = normalized_image(image);
            stored.revision = revision;
            return Ok(stored);
        }
        match self.get_image(image.id).await? {
            Some(_) => Err(MetaError::Conflict(image_label(image.id))),
            None => Err(MetaError::NotFound(image_label(image.id))),
        }
    }

    async fn list_images(&self, query: &ImageListQuery) -> MetaResult<Vec<Image>> {
        let marker = match query.marker {
            Some(id) => Some(self.visible_marker(&query.scope, id).await?),
            None => None,
        };
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let stmt = list_statement(self.dialect(), query, marker.as_ref());
        self.load_images("list_images", &stmt).await
    }

    async fn project_usage(&self, owner: &str) -> MetaResult<ProjectUsage> {
        let store_count = match self.dialect() {
            Dialect::Sqlite => "json_array_length(stores_json)",
            Dialect::Postgres => "json_array_length(stores_json::json)",
        };
        let sql = format!(
            "SELECT COUNT(*), \
             CAST(COALESCE(SUM(size * {store_count}), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN status IN ('saving', 'uploading', 'importing') \
                  OR copying THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN status NOT IN ('uploading', 'importing') AND copying \
                  THEN COALESCE(size, 0) ELSE 0 END), 0) AS BIGINT) \
             FROM (SELECT size, status, stores_json, EXISTS (SELECT 1 FROM image_properties p \
                   WHERE p.image_id = i.id AND p.name = $2 AND p.value <> '') AS copying \
                   FROM images i WHERE owner = $1 AND deleted_at IS NULL \
                   AND status NOT IN ('deleted', 'killed')) live"
        );
        let stmt = Stmt::with(
            &sql,
            vec![text(owner), text(crate::IMPORTING_TO_STORES_PROPERTY)],
        );
        let (count, size, uploading, copying) = on_pool!(self, pool => bind_args!(sqlx::query_as::<_, (i64, i64, i64, i64)>(&stmt.sql), &stmt.args)
            .fetch_one(pool)
            .await
            .map_err(db_error("project_usage")))?;
        let staged = Stmt::with(
            "SELECT id FROM images WHERE owner = $1 AND deleted_at IS NULL \
             AND status IN ('uploading', 'importing') ORDER BY id",
            vec![text(owner)],
        );
        let staged_images = self
            .fetch_strings("project_usage", staged)
            .await?
            .iter()
            .map(|id| {
                uuid::Uuid::parse_str(id).map_err(|e| corrupt(format_args!("image id {id}: {e}")))
            })
            .collect::<MetaResult<Vec<_>>>()?;
        Ok(ProjectUsage {
            image_size_total: size,
            image_count_total: count,
            image_count_uploading: uploading,
            copying_size: copying,
            staged_images,
        })
    }

    async fn set_project_limit(
        &self,
        project_id: &str,
        resource: QuotaResource,
        limit: Option<Limit>,
    ) -> MetaResult<()> {
        let stmt = match limit {
            Some(limit) => Stmt::with(
                "INSERT INTO project_limits (project_id, resource, resource_limit) \
                 VALUES ($1, $2, $3) ON CONFLICT (project_id, resource) \
                 DO UPDATE SET resource_limit = excluded.resource_limit",
                vec![
                    text(project_id),
                    text(resource.as_str()),
                    Arg::Int(limit.to_signed()),
                ],
            ),
            None => Stmt::with(
                "DELETE FROM project_limits WHERE project_id = $1 AND resource = $2",
                vec![text(project_id), text(resource.as_str())],
            ),
        };
        self.execute("set_project_limit", stmt).await.map(drop)
    }

    async fn project_limits(&self, project_id: &str) -> MetaResult<Vec<(QuotaResource, Limit)>> {
        let stmt = Stmt::with(
            "SELECT resource, resource_limit FROM project_limits WHERE project_id = $1",
            vec![text(project_id)],
        );
        let rows = on_pool!(self, pool => bind_args!(sqlx::query_as::<_, (String, i64)>(&stmt.sql), &stmt.args)
            .fetch_all(pool)
            .await
            .map_err(db_error("project_limits")))?;
        let mut limits = rows
            .into_iter()
            .map(|(name, limit)| {
                QuotaResource::parse(&name)
                    .map(|r| (r, Limit::from_signed(limit)))
                    .ok_or_else(|| corrupt(format_args!("unknown limit {name:?}")))
            })
            .collect::<MetaResult<Vec<_>>>()?;
        limits.sort_by_key(|(r, _)| *r);
        Ok(limits)
    }

    async fn referenced_blob_keys(&self) -> MetaResult<Vec<String>> {
        let stmt = Stmt::new(
            "SELECT DISTINCT blob_key FROM images WHERE blob_key IS NOT NULL ORDER BY blob_key",
        );
        self.fetch_strings("referenced_blob_keys", stmt).await
    }

    async fn blob_reference_count(&self, blob_key: &str, store: &str) -> MetaResult<u64> {
        // `images_blob_key` (a partial index on non-null keys) finds the few rows naming the
        // key; only their store lists are unnested.
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT COUNT(*) FROM images i, json_each(i.stores_json) s \
                 WHERE i.blob_key = $1 AND s.value = $2"
            }
            Dialect::Postgres => {
                "SELECT COUNT(*) FROM images i, \
                 json_array_elements_text(i.stores_json::json) s(id) \
                 WHERE i.blob_key = $1 AND s.id = $2"
            }
        };
        let stmt = Stmt::with(sql, vec![text(blob_key), text(store)]);
        let count = on_pool!(self, pool => bind_args!(sqlx::query_scalar::<_, i64>(&stmt.sql), &stmt.args)
            .fetch_one(pool)
            .await
            .map_err(db_error("blob_reference_count")))?;
        // COUNT(*) is never negative.
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn referenced_blob_keys_in(&self, store: &str) -> MetaResult<Vec<String>> {
        // The stores are a JSON array of ids; each dialect unnests it its own way.
        let sql = match self.dialect() {
            Dialect::Sqlite => {
                "SELECT DISTINCT i.blob_key FROM images i, json_each(i.stores_json) s \
                 WHERE i.blob_key IS NOT NULL AND s.value = $1 ORDER BY i.blob_key"
            }
            Dialect::Postgres => {
                "SELECT DISTINCT i.blob_key FROM images i, \
                 json_array_elements_text(i.stores_json::json) s(id) \
                 WHERE i.blob_key IS NOT NULL AND s.id = $1 ORDER BY i.blob_key"
            }
        };
        let stmt = Stmt::with(sql, vec![text(store)]);
        self.fetch_strings("referenced_blob_keys_in", stmt).await
    }

    async fn add_member(&self, member: &Member) -> MetaResult<()> {
        let stmt = Stmt::with(
            "INSERT INTO image_members (image_id, member_id, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5)",
            vec![
                Arg::Text(member.image_id.to_string()),
                text(&member.member_id),
                text(member.status.as_str()),
                Arg::Int(to_micros(member.created_at)),
                Arg::Int(to_micros(member.updated_at)),
            ],
        );
        match self.write_tx(vec![stmt]).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(MetaError::AlreadyExists(member_label(
                member.image_id,
                &member.member_id,
            ))),
            Err(e) if is_foreign_key_violation(&e) => {
                Err(MetaError::NotFound(image_label(member.image_id)))
            }
            Err(e) => Err(MetaError::Database {
                op: "add_member",
                source: e,
            }),
        }
    }

    async fn get_member(
        &self,
        image_id: uuid::Uuid,
        member_id: &str,
    ) -> MetaResult<Option<Member>> {
        let stmt = Stmt::with(
            "SELECT image_id, member_id, status, created_at, updated_at FROM image_members \
             WHERE image_id = $1 AND member_id = $2",
            vec![Arg::Text(image_id.to_string()), text(member_id)],
        );
        Ok(self.fetch_members("get_member", stmt).await?.pop())
    }

    async fn list_members(&self, image_id: uuid::Uuid) -> MetaResult<Vec<Member>> {
        let stmt = Stmt::with(
            "SELECT image_id, member_id, status, created_at, updated_at FROM image_members \
             WHERE image_id = $1 ORDER BY created_at, member_id",
            vec![Arg::Text(image_id.to_string())],
        );
        self.fetch_members("list_members", stmt).await
    }

    async fn update_member(&self, member: &Member) -> MetaResult<()> {
        let stmt = Stmt::with(
            "UPDATE image_members SET status = $3, updated_at = $4 WHERE image_id = $1 AND member_id = $2",
            vec![
                Arg::Text(member.image_id.to_string()),
                text(&member.member_id),
                text(member.status.as_str()),
                Arg::Int(to_micros(member.updated_at)),
            ],
        );
        match self.execute("update_member", stmt).await? {
            0 => Err(MetaError::NotFound(member_label(
                member.image_id,
                &member.member_id,
            ))),
            _ => Ok(()),
        }
    }

    async fn delete_member(&self, image_id: uuid::Uuid, member_id: &str) -> MetaResult<()> {
        let stmt = Stmt::with(
            "DELETE FROM image_members WHERE image_id = $1 AND member_id = $2",
            vec![Arg::Text(image_id.to_string()), text(member_id)],
        );
        match self.execute("delete_member", stmt).await? {
            0 => Err(MetaError::NotFound(member_label(image_id, member_id))),
            _ => Ok(()),
        }
    }

    async fn create_project(&self, project: &Project) -> MetaResult<()> {
        let stmt = Stmt::with(
            "INSERT INTO projects (id, name, domain_id) VALUES ($1, $2, $3)",
            vec![
                text(&project.id),
                text(&project.name),
                text(&project.domain_id),
            ],
        );
        match self.write_tx(vec![stmt]).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(MetaError::AlreadyExists(format!(
                "project {}",
                project.name
            ))),
            Err(e) => Err(MetaError::Database {
                op: "create_project",
                source: e,
            }),
        }
    }

    async fn get_project(&self, id: &str) -> MetaResult<Option<Project>> {
        let stmt = Stmt::with(
            "SELECT id, name, domain_id FROM projects WHERE id = $1",
            vec![text(id)],
        );
        Ok(self.fetch_projects("get_project", stmt).await?.pop())
    }

    async fn find_project(&self, domain_id: &str, name: &str) -> MetaResult<Option<Project>> {
        let stmt = Stmt::with(
            "SELECT id, name, domain_id FROM projects WHERE domain_id = $1 AND name = $2",
            vec![text(domain_id), text(name)],
        );
        Ok(self.fetch_projects("find_project", stmt).await?.pop())
    }

    async fn list_projects(&self) -> MetaResult<Vec<Project>> {
        let stmt = Stmt::new("SELECT id, name, domain_id FROM projects ORDER BY name, id");
        self.fetch_projects("list_projects", stmt).await
    }

    async fn create_user(&self, user: &User) -> MetaResult<()> {
        let stmt = Stmt::with(
            "INSERT INTO users (id, name, domain_id, password_hash) VALUES ($1, $2, $3, $4)",
            vec![
                text(&user.id),
                text(&user.name),
                text(&user.domain_id),
                text(&user.password_hash),
            ],
        );
        match self.write_tx(vec![stmt]).await {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(MetaError::AlreadyExists(format!("user {}", user.name)))
            }
            Err(e) => Err(MetaError::Database {
                op: "create_user",
                source: e,
            }),
        }
    }

    async fn get_user(&self, id: &str) -> MetaResult<Option<User>> {
        let stmt = Stmt::with(
            "SELECT id, name, domain_id, password_hash FROM users WHERE id = $1",
            vec![text(id)],
        );
        Ok(self.fetch_users("get_user", stmt).await?.pop())
    }

    async fn find_user(&self, domain_id: &str, name: &str) -> MetaResult<Option<User>> {
        let stmt = Stmt::with(
            "SELECT id, name, domain_id, password_hash FROM users WHERE domain_id = $1 AND name = $2",
            vec![text(domain_id), text(name)],
        );
        Ok(self.fetch_users("find_user", stmt).await?.pop())
    }

    async fn list_users(&self) -> MetaResult<Vec<User>> {
        let stmt =
            Stmt::new("SELECT id, name, domain_id, password_hash FROM users ORDER BY name, id");
        self.fetch_users("list_users", stmt).await
    }

    async fn set_user_password(&self, user_id: &str, password_hash: &str) -> MetaResult<()> {
        let stmt = Stmt::with(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            vec![text(user_id), text(password_hash)],
        );
        match self.execute("set_user_password", stmt).await? {
            0 => Err(MetaError::NotFound(format!("user {user_id}"))),
            _ => Ok(()),
        }
    }

    async fn assign_role(&self, user_id: &str, project_id: &str, role: Role) -> MetaResult<()> {
        let stmt = Stmt::with(
            "INSERT INTO role_assignments (user_id, project_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            vec![text(user_id), text(project_id), text(role.as_str())],
        );
        self.execute("assign_role", stmt).await.map(drop)
    }

    async fn unassign_role(&self, user_id: &str, project_id: &str, role: Role) -> MetaResult<()> {
        let stmt = Stmt::with(
            "DELETE FROM role_assignments WHERE user_id = $1 AND project_id = $2 AND role = $3",
            vec![text(user_id), text(project_id), text(role.as_str())],
        );
        self.execute("unassign_role", stmt).await.map(drop)
    }

    async fn assigned_roles(&self, user_id: &str, project_id: &str) -> MetaResult<Vec<Role>> {
        let stmt = Stmt::with(
            "SELECT user_id, project_id, role FROM role_assignments WHERE user_id = $1 AND project_id = $2",
            vec![text(user_id), text(project_id)],
        );
        let roles = self.fetch_roles("assigned_roles", stmt).await?;
        Ok(roles.into_iter().map(|(_, _, role)| role).collect())
    }

    async fn list_role_assignments(&self) -> MetaResult<Vec<(String, String, Role)>> {
        let stmt = Stmt::new("SELECT user_id, project_id, role FROM role_assignments");
        self.fetch_roles("list_role_assignments", stmt).await
    }

    async fn get_or_init_secret(&self, name: &str, value: &[u8]) -> MetaResult<Vec<u8>> {
        let insert = Stmt::with(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            vec![text(name), Arg::Bytes(value.to_vec())],
        );
        self.execute("get_or_init_secret", insert).await?;
        let select = Stmt::with(
            "SELECT value FROM secrets WHERE name = $1",
            vec![text(name)],
        );
        let stored = self.fetch_bytes("get_or_init_secret", select).await?.pop();
        stored.ok_or_else(|| corrupt(format_args!("secret {name} vanished after insert")))
    }

    async fn revoke_token(&self, audit_id: &str, expires_at: i64) -> MetaResult<()> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // Expired tokens are rejected anyway; forgetting them keeps the table small.
        let prune = Stmt::with(
            "DELETE FROM revoked_tokens WHERE expires_at < $1",
            vec![Arg::Int(now)],
        );
        let insert = Stmt::with(
            "INSERT INTO revoked_tokens (audit_id, expires_at) VALUES ($1, $2) \
             ON CONFLICT (audit_id) DO UPDATE SET expires_at = excluded.expires_at",
            vec![text(audit_id), Arg::Int(expires_at)],
        );
        self.execute("revoke_token", prune).await?;
        self.execute("revoke_token", insert).await.map(drop)
    }

    async fn is_token_revoked(&self, audit_id: &str) -> MetaResult<bool> {
        let stmt = Stmt::with(
            "SELECT 1 FROM revoked_tokens WHERE audit_id = $1",
            vec![text(audit_id)],
        );
        on_pool!(self, pool => bind_args!(sqlx::query(&stmt.sql), &stmt.args)
            .fetch_optional(pool)
            .await
            .map(|row| row.is_some())
            .map_err(db_error("is_token_revoked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written before several stores existed: migration 0005 turns each image's
    /// `store` into the one-element store list.
    #[tokio::test]
    async fn migration_0005_moves_the_store_into_the_store_list() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("old.sqlite").display()
        );
        let pool = SqlitePool::connect(&url).await.unwrap();
        let all = sqlx::migrate!("./migrations/sqlite");
        let before = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(
                all.migrations
                    .iter()
                    .filter(|m| m.version < 5)
                    .cloned()
                    .collect(),
            ),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        before.run(&pool).await.unwrap();
        let id = uuid::Uuid::new_v4();
        sqlx::query(
            "INSERT INTO images (id, status, visibility, protected, os_hidden, owner, \
             container_format, disk_format, min_ram, min_disk, size, checksum, os_hash_algo, \
             os_hash_value, virtual_size, blob_key, store, created_at, updated_at, revision, \
             tags_json, properties_json) VALUES ($1, 'active', 'private', 0, 0, 'p', 'bare', \
             'raw', 0, 0, 5, 'c', 'sha512', 'h', 5, 'images/k', 'local', 0, 0, 0, '[]', '{}')",
        )
        .bind(id.to_string())
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let store = SqlStore::connect(&url).await.unwrap();
        let image = store.get_image(id).await.unwrap().unwrap();
        let data = image.data.unwrap();
        assert_eq!(
            (data.blob_key.as_str(), data.stores.as_slice()),
            ("images/k", &["local".to_owned()][..])
        );
        assert_eq!(
            store
                .blob_reference_count("images/k", "local")
                .await
                .unwrap(),
            1
        );
    }

    #[test]
    fn placeholders_number_the_args() {
        let mut stmt = Stmt::new("SELECT 1 WHERE a = ");
        stmt.bind(Arg::Int(1))
            .push(" AND b IN ")
            .bind_list([text("x"), text("y")]);
        stmt.push(" AND c IN ").bind_list([]);
        assert_eq!(
            stmt.sql,
            "SELECT 1 WHERE a = $1 AND b IN ($2, $3) AND c IN (NULL)"
        );
        assert_eq!(stmt.args.len(), 3);
    }

    #[test]
    fn keyset_uses_a_row_value_when_directions_agree() {
        let marker = Image::new(uuid::Uuid::nil(), None, ims_domain::now());
        let mut stmt = Stmt::default();
        push_keyset(
            &mut stmt,
            &[
                (SortKey::CreatedAt, SortDir::Desc),
                (SortKey::Id, SortDir::Desc),
            ],
            &marker,
        );
        assert_eq!(stmt.sql, " AND (i.created_at, i.id) < ($1, $2)");
        let mut stmt = Stmt::default();
        push_keyset(
            &mut stmt,
            &[(SortKey::Name, SortDir::Asc), (SortKey::Id, SortDir::Desc)],
            &marker,
        );
        assert_eq!(
            stmt.sql,
            " AND ((COALESCE(i.name, '') > $1) OR (COALESCE(i.name, '') = $2 AND i.id < $3))"
        );
    }
}

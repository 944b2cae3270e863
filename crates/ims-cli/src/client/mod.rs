//! `ims image ...`: an openstackclient-style client for the Image API v2 served by `ims serve`.
//!
//! The module turns command-line arguments into Glance v2 requests ([`api`]), authenticates
//! the way openstackclient does ([`auth`]), streams image data with progress bars
//! ([`transfer`]) and renders results as tables, JSON or CSV ([`output`]).

mod api;
mod auth;
mod output;
mod patch;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;

pub use auth::AuthArgs;

use api::ImageClient;
use output::{Table, emit};
use patch::{ImageFields, parse_property};

/// Manage images on an Image API v2 service (like `openstack image ...`).
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    pub format: OutputFormat,
    // After `format`: the flattened struct's help heading would otherwise apply to it too.
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// How results are printed on stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned, bordered columns.
    Table,
    /// The server's JSON, pretty-printed.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Image visibility as the API spells it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Private,
    Shared,
    Community,
}

impl Visibility {
    fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Shared => "shared",
            Visibility::Community => "community",
        }
    }
}

/// Visibility filter for `list`; `all` is only meaningful as a filter.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisibilityFilter {
    Public,
    Private,
    Shared,
    Community,
    All,
}

/// Member status filter for `list`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatusFilter {
    Accepted,
    Pending,
    Rejected,
    All,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Create an image, optionally uploading its data from a file.
    Create(CreateArgs),
    /// List images (all pages unless --limit is given).
    List(ListArgs),
    /// Show one image.
    Show(ImageRef),
    /// Change image attributes and properties.
    Update(UpdateArgs),
    /// Delete images.
    Delete(DeleteArgs),
    /// Upload image data from a file.
    Upload(UploadArgs),
    /// Download image data to a file or stdout.
    Download(DownloadArgs),
    /// Share an image with a project (makes it `shared` if needed and adds the member).
    Share(ShareArgs),
    /// Manage image members.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Add or remove image tags.
    #[command(subcommand)]
    Tag(TagCommand),
}

/// An image given by ID or by name.
#[derive(clap::Args, Debug)]
pub struct ImageRef {
    /// Image ID or name.
    pub image: String,
}

/// Protection flags shared by `create` and `update`.
#[derive(clap::Args, Debug, Default)]
pub struct ProtectionArgs {
    /// Prevent the image from being deleted.
    #[arg(long, conflicts_with = "unprotected")]
    pub protected: bool,
    /// Allow the image to be deleted.
    #[arg(long)]
    pub unprotected: bool,
}

impl ProtectionArgs {
    fn requested(&self) -> Option<bool> {
        match (self.protected, self.unprotected) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Name of the new image.
    pub name: String,
    /// Disk format (raw, qcow2, vmdk, vhd, vhdx, vdi, iso, ploop, ami, ari, aki).
    #[arg(long, default_value = "raw")]
    pub disk_format: String,
    /// Container format (bare, ovf, ova, ami, ari, aki, docker, compressed).
    #[arg(long, default_value = "bare")]
    pub container_format: String,
    #[arg(long, value_enum)]
    pub visibility: Option<Visibility>,
    /// Custom property (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Minimum disk size in GiB.
    #[arg(long)]
    pub min_disk: Option<u64>,
    /// Minimum RAM in MiB.
    #[arg(long)]
    pub min_ram: Option<u64>,
    #[command(flatten)]
    pub protection: ProtectionArgs,
    /// Upload image data from this file after creating the image.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long, value_enum)]
    pub visibility: Option<VisibilityFilter>,
    /// Owner project ID.
    #[arg(long)]
    pub owner: Option<String>,
    /// Images shared with you by this member status.
    #[arg(long, value_enum)]
    pub member_status: Option<MemberStatusFilter>,
    /// Only images with this tag (repeatable; all must match).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only images with this custom property value (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Sort order, e.g. `name:asc,created_at:desc`.
    #[arg(long, value_name = "KEY[:DIR][,...]")]
    pub sort: Option<String>,
    /// Fetch at most one page of this many images.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Show more columns.
    #[arg(long)]
    pub long: bool,
}

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// Image ID or name.
    pub image: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Set a custom property (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Remove a custom property (repeatable).
    #[arg(long = "remove-property", value_name = "KEY")]
    pub remove_properties: Vec<String>,
    #[arg(long, value_enum)]
    pub visibility: Option<Visibility>,
    #[command(flatten)]
    pub protection: ProtectionArgs,
    #[arg(long)]
    pub min_disk: Option<u64>,
    #[arg(long)]
    pub min_ram: Option<u64>,
    #[arg(long)]
    pub disk_format: Option<String>,
    #[arg(long)]
    pub container_format: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Image IDs or names.
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// Image ID or name.
    pub image: String,
    /// File holding the image data.
    #[arg(long)]
    pub file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct DownloadArgs {
    /// Image ID or name.
    pub image: String,
    /// Destination file; `-` or none writes to stdout.
    #[arg(long)]
    pub file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ShareArgs {
    /// Image ID or name.
    pub image: String,
    /// Project ID to share the image with.
    pub project: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members of an image.
    List(ImageRef),
    /// Add a project as a member of an image.
    Add(MemberArgs),
    /// Remove a project from the members of an image.
    Remove(MemberArgs),
    /// Accept an image shared with your project.
    Accept(MemberStatusArgs),
    /// Reject an image shared with your project.
    Reject(MemberStatusArgs),
}

#[derive(clap::Args, Debug)]
pub struct MemberArgs {
    /// Image ID or name.
    pub image: String,
    /// Member project ID.
    pub project: String,
}

#[derive(clap::Args, Debug)]
pub struct MemberStatusArgs {
    /// Image ID or name.
    pub image: String,
    /// Member project ID (default: the project you are authenticated to).
    pub project: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum TagCommand {
    /// Add tags to an image.
    Add(TagArgs),
    /// Remove tags from an image.
    Remove(TagArgs),
}

#[derive(clap::Args, Debug)]
pub struct TagArgs {
    /// Image ID or name.
    pub image: String,
    /// Tags.
    #[arg(required = true)]
    pub tags: Vec<String>,
}

/// A mistake in how the command was invoked (exit code 2), as opposed to a failed API call.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// Runs `ims image ...`. Errors are printed on stderr here; the exit code says what kind
/// of failure it was (1: the API or the network, 2: usage).
pub async fn run(args: ImageArgs) -> anyhow::Result<ExitCode> {
    match execute(args).await {
        Ok(code) => Ok(code),
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            Ok(exit_code_for(&err))
        }
    }
}

/// The error and its causes on one line; [`api::ApiError`] already reads as the server's message.
fn describe(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

async fn execute(args: ImageArgs) -> anyhow::Result<ExitCode> {
    let format = args.format;
    if let ImageCommand::Download(download) = &args.command {
        transfer::check_download_target(download.file.as_deref())?;
    }
    let client = ImageClient::connect(&args.auth).await?;
    match args.command {
        ImageCommand::Create(create) => cmd_create(&client, format, create).await,
        ImageCommand::List(list) => cmd_list(&client, format, list).await,
        ImageCommand::Show(show) => {
            let image = client.resolve(&show.image).await?;
            print_image(format, &image)
        }
        ImageCommand::Update(update) => cmd_update(&client, format, update).await,
        ImageCommand::Delete(delete) => cmd_delete(&client, delete).await,
        ImageCommand::Upload(upload) => {
            let image = client.resolve(&upload.image).await?;
            let image = upload_file(&client, &image, &upload.file).await?;
            print_image(format, &image)
        }
        ImageCommand::Download(download) => {
            let image = client.resolve(&download.image).await?;
            // Dropping the download on Ctrl-C lets the writer thread delete its temp file.
            tokio::select! {
                result = transfer::download(&client, &image, download.file.as_deref()) => result?,
                _ = tokio::signal::ctrl_c() => anyhow::bail!("download interrupted"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Share(share) => cmd_share(&client, format, share).await,
        ImageCommand::Member(member) => cmd_member(&client, format, member).await,
        ImageCommand::Tag(tag) => cmd_tag(&client, tag).await,
    }
}

async fn cmd_create(
    client: &ImageClient,
    format: OutputFormat,
    args: CreateArgs,
) -> anyhow::Result<ExitCode> {
    if let Some(file) = &args.file {
        transfer::check_readable(file)?;
    }
    let fields = ImageFields {
        name: Some(args.name),
        disk_format: Some(args.disk_format),
        container_format: Some(args.container_format),
        visibility: args.visibility.map(|v| v.as_str().to_owned()),
        protected: args.protection.requested(),
        min_disk: args.min_disk,
        min_ram: args.min_ram,
        properties: args.properties,
    };
    let body = patch::build_create_body(&fields, &args.tags);
    let image = client.create_image(&body).await?;
    let image = match &args.file {
        Some(file) => upload_file(client, &image, file).await.with_context(|| {
            format!(
                "image {} was created but its upload failed",
                api::image_id(&image).unwrap_or("?")
            )
        })?,
        None => image,
    };
    print_image(format, &image)
}

async fn upload_file(
    client: &ImageClient,
    image: &Value,
    file: &std::path::Path,
) -> anyhow::Result<Value> {
    let id = api::image_id(image)?;
    let local_md5 = transfer::upload(client, id, file).await?;
    let image = client.get_image(id).await?;
    transfer::verify_uploaded_checksum(&image, &local_md5)?;
    Ok(image)
}

async fn cmd_list(
    client: &ImageClient,
    format: OutputFormat,
    args: ListArgs,
) -> anyhow::Result<ExitCode> {
    let query = list_query(&args);
    let images = client.list_images(&query, args.limit.is_none()).await?;
    match format {
        OutputFormat::Json => emit_json(&Value::Array(images)),
        OutputFormat::Csv => emit(&output::image_list_csv(&images).render_csv()),
        OutputFormat::Table => emit(&output::image_list_table(&images, args.long).render_text()),
    }
}

fn list_query(args: &ListArgs) -> Vec<(String, String)> {
    let mut query: Vec<(String, String)> = Vec::new();
    let mut push = |key: &str, value: &str| query.push((key.to_owned(), value.to_owned()));
    if let Some(name) = &args.name {
        push("name", name);
    }
    if let Some(status) = &args.status {
        push("status", status);
    }
    if let Some(visibility) = args.visibility {
        push("visibility", value_name(visibility).as_str());
    }
    if let Some(owner) = &args.owner {
        push("owner", owner);
    }
    if let Some(member_status) = args.member_status {
        push("member_status", value_name(member_status).as_str());
    }
    for tag in &args.tags {
        push("tag", tag);
    }
    for (key, value) in &args.properties {
        push(key, value);
    }
    if let Some(sort) = &args.sort {
        push("sort", sort);
    }
    if let Some(limit) = args.limit {
        push("limit", &limit.to_string());
    }
    query
}

fn value_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

async fn cmd_update(
    client: &ImageClient,
    format: OutputFormat,
    args: UpdateArgs,
) -> anyhow::Result<ExitCode> {
    let fields = ImageFields {
        name: args.name,
        disk_format: args.disk_format,
        container_format: args.container_format,
        visibility: args.visibility.map(|v| v.as_str().to_owned()),
        protected: args.protection.requested(),
        min_disk: args.min_disk,
        min_ram: args.min_ram,
        properties: args.properties,
    };
    let ops = patch::build_update_patch(&fields, &args.remove_properties);
    if ops.is_empty() {
        return Err(usage(
            "nothing to update: give at least one attribute to change",
        ));
    }
    let image = client.resolve(&args.image).await?;
    let updated = client.patch_image(api::image_id(&image)?, &ops).await?;
    print_image(format, &updated)
}

async fn cmd_delete(client: &ImageClient, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let mut failures = 0usize;
    for name_or_id in &args.images {
        let result = async {
            let image = client.resolve(name_or_id).await?;
            client.delete_image(api::image_id(&image)?).await
        }
        .await;
        if let Err(err) = result {
            failures += 1;
            eprintln!(
                "error: failed to delete image {name_or_id}: {}",
                describe(&err)
            );
        }
    }
    if failures > 0 {
        eprintln!(
            "{failures} of {} images failed to delete",
            args.images.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn cmd_share(
    client: &ImageClient,
    format: OutputFormat,
    args: ShareArgs,
) -> anyhow::Result<ExitCode> {
    let image = client.resolve(&args.image).await?;
    let id = api::image_id(&image)?;
    if image.get("visibility").and_then(Value::as_str) != Some("shared") {
        let ops = patch::build_update_patch(
            &ImageFields {
                visibility: Some("shared".to_owned()),
                ..ImageFields::default()
            },
            &[],
        );
        client.patch_image(id, &ops).await?;
    }
    let member = client.add_member(id, &args.project).await?;
    print_member(format, &member)
}

async fn cmd_member(
    client: &ImageClient,
    format: OutputFormat,
    command: MemberCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        MemberCommand::List(args) => {
            let image = client.resolve(&args.image).await?;
            let members = client.list_members(api::image_id(&image)?).await?;
            match format {
                OutputFormat::Json => emit_json(&Value::Array(members)),
                OutputFormat::Csv => emit(&output::members_table(&members).render_csv()),
                OutputFormat::Table => emit(&output::members_table(&members).render_text()),
            }
        }
        MemberCommand::Add(args) => {
            let image = client.resolve(&args.image).await?;
            let member = client
                .add_member(api::image_id(&image)?, &args.project)
                .await?;
            print_member(format, &member)
        }
        MemberCommand::Remove(args) => {
            let image = client.resolve(&args.image).await?;
            client
                .remove_member(api::image_id(&image)?, &args.project)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        MemberCommand::Accept(args) => set_member_status(client, format, args, "accepted").await,
        MemberCommand::Reject(args) => set_member_status(client, format, args, "rejected").await,
    }
}

async fn set_member_status(
    client: &ImageClient,
    format: OutputFormat,
    args: MemberStatusArgs,
    status: &str,
) -> anyhow::Result<ExitCode> {
    let project = match args.project {
        Some(project) => project,
        None => client.project_id().map(str::to_owned).ok_or_else(|| {
            usage("the member project is unknown when authenticating with a bare token; give it as PROJECT")
        })?,
    };
    let image = client.resolve_shared_with_me(&args.image).await?;
    let member = client
        .update_member(api::image_id(&image)?, &project, status)
        .await?;
    print_member(format, &member)
}

async fn cmd_tag(client: &ImageClient, command: TagCommand) -> anyhow::Result<ExitCode> {
    let (args, adding) = match command {
        TagCommand::Add(args) => (args, true),
        TagCommand::Remove(args) => (args, false),
    };
    let image = client.resolve(&args.image).await?;
    let id = api::image_id(&image)?;
    for tag in &args.tags {
        if adding {
            client.add_tag(id, tag).await?;
        } else {
            client.remove_tag(id, tag).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_image(format: OutputFormat, image: &Value) -> anyhow::Result<ExitCode> {
    match format {
        OutputFormat::Json => emit_json(image),
        OutputFormat::Csv => emit(&output::fields_table(image).render_csv()),
        OutputFormat::Table => emit(&output::fields_table(image).render_text()),
    }
}

fn print_member(format: OutputFormat, member: &Value) -> anyhow::Result<ExitCode> {
    let table: Table = output::fields_table(member);
    match format {
        OutputFormat::Json => emit_json(member),
        OutputFormat::Csv => emit(&table.render_csv()),
        OutputFormat::Table => emit(&table.render_text()),
    }
}

fn emit_json(value: &Value) -> anyhow::Result<ExitCode> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text)
}

#[cfg(test)]
mod tests {
    use super::api::ApiError;
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct TestCli {
        #[command(subcommand)]
        command: TestTop,
    }

    #[derive(clap::Subcommand, Debug)]
    enum TestTop {
        Image(ImageArgs),
    }

    fn parse(args: &[&str]) -> ImageArgs {
        let mut argv = vec!["ims", "image"];
        argv.extend_from_slice(args);
        match TestCli::try_parse_from(argv).expect("arguments parse") {
            TestCli {
                command: TestTop::Image(image),
            } => image,
        }
    }

    #[test]
    fn list_arguments_become_query_parameters() {
        let args = parse(&[
            "list",
            "--name",
            "cirros",
            "--visibility",
            "shared",
            "--member-status",
            "pending",
            "--tag",
            "a",
            "--tag",
            "b",
            "--property",
            "os_distro=ubuntu",
            "--sort",
            "name:asc",
            "--limit",
            "5",
        ]);
        let ImageCommand::List(list) = args.command else {
            panic!("expected list");
        };
        let query = list_query(&list);
        let pairs: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("name", "cirros"),
                ("visibility", "shared"),
                ("member_status", "pending"),
                ("tag", "a"),
                ("tag", "b"),
                ("os_distro", "ubuntu"),
                ("sort", "name:asc"),
                ("limit", "5"),
            ]
        );
    }

    #[test]
    fn format_is_global_and_defaults_to_table() {
        assert_eq!(parse(&["list"]).format, OutputFormat::Table);
        assert_eq!(
            parse(&["list", "--format", "csv"]).format,
            OutputFormat::Csv
        );
        assert_eq!(
            parse(&["--format", "json", "show", "x"]).format,
            OutputFormat::Json
        );
    }

    #[test]
    fn protected_and_unprotected_conflict() {
        let argv = [
            "ims",
            "image",
            "update",
            "x",
            "--protected",
            "--unprotected",
        ];
        assert!(TestCli::try_parse_from(argv).is_err());
        let ImageCommand::Update(update) = parse(&["update", "x", "--unprotected"]).command else {
            panic!("expected update");
        };
        assert_eq!(update.protection.requested(), Some(false));
    }

    #[test]
    fn malformed_property_is_a_usage_error() {
        let argv = ["ims", "image", "create", "x", "--property", "novalue"];
        let err = TestCli::try_parse_from(argv).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn create_defaults_to_raw_bare() {
        let ImageCommand::Create(create) = parse(&["create", "img"]).command else {
            panic!("expected create");
        };
        assert_eq!(create.disk_format, "raw");
        assert_eq!(create.container_format, "bare");
    }

    #[test]
    fn exit_codes_separate_usage_from_api_errors() {
        assert_eq!(exit_code_for(&usage("bad")), ExitCode::from(2));
        let api = anyhow::Error::new(ApiError {
            status: 404,
            message: "gone".into(),
        });
        assert_eq!(exit_code_for(&api), ExitCode::from(1));
    }
}

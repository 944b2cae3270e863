//! The `ims` binary: `serve` runs a node, `admin` manages identity directly in the database,
//! and `image` is the API client.

mod client;
mod img;

/// mimalloc: under glibc malloc, arena locking and frees took about a third of the CPU of a
/// 100-image listing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ims_core::identity::{DomainRef, Named};
use ims_core::{App, Config};
use ims_domain::{Limit, QuotaResource, Role};

#[derive(Parser, Debug)]
#[command(
    name = "ims",
    version,
    about = "Image Management Service: server, admin and client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: the OpenStack Image API v2 and the identity endpoint.
    Serve(ServeArgs),
    /// Manage projects, users and roles directly in the node's database.
    Admin(AdminArgs),
    /// Talk to a running service (authenticates like openstackclient).
    Image(client::ImageArgs),
    /// Work on local image files offline (`ims img inspect IMAGE`).
    Img(img::ImgArgs),
}

/// Where the node's configuration comes from; flags override file and environment.
#[derive(Args, Debug)]
struct NodeArgs {
    /// TOML configuration file.
    #[arg(long, env = "IMS_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (embedded database and local store).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (`sqlite://…` or `postgres://…`).
    #[arg(long)]
    database_url: Option<String>,
}

impl NodeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &self.database_url {
            config.database_url = Some(url.clone());
        }
        Ok(config)
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// URL clients reach this node at (catalog, Location headers).
    #[arg(long)]
    public_url: Option<String>,
}

#[derive(Args, Debug)]
struct AdminArgs {
    #[command(flatten)]
    node: NodeArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Users.
    #[command(subcommand)]
    User(UserCommand),
    /// Role assignments (admin, member, reader).
    #[command(subcommand)]
    Role(RoleCommand),
    /// Access keys (AK/SK) for the IMS API; the secret is printed once, at creation.
    #[command(subcommand)]
    AccessKey(AccessKeyCommand),
    /// Remove orphaned blobs and reset dead uploads now.
    Gc,
}

#[derive(Subcommand, Debug)]
enum AccessKeyCommand {
    /// Creates a key for a user; prints `AK<TAB>SK` (the SK is not stored in clear).
    Create {
        /// User name (domain Default).
        #[arg(long)]
        user: String,
        #[arg(long)]
        description: Option<String>,
    },
    /// Lists a user's keys (never the secrets).
    List {
        #[arg(long)]
        user: String,
    },
    Delete {
        access_key: String,
    },
}

#[derive(Subcommand, Debug)]
enum ProjectCommand {
    Create {
        name: String,
    },
    List,
    /// Sets a project's own limit (Glance's unified limits: image_size_total and
    /// image_stage_total in MiB, image_count_total, image_count_uploading); -1 = unlimited.
    SetLimit {
        /// Project name (domain Default) or id.
        project: String,
        resource: String,
        #[arg(allow_negative_numbers = true)]
        limit: i64,
    },
    /// Removes a project's own limit: the configured default applies again.
    UnsetLimit {
        project: String,
        resource: String,
    },
    /// Prints each limit of a project (`resource<TAB>limit<TAB>usage<TAB>project|default`).
    Limits {
        project: String,
    },
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    Create {
        name: String,
        #[arg(long, env = "IMS_NEW_USER_PASSWORD")]
        password: String,
        /// Give the user a role on this project right away.
        #[arg(long, requires = "role")]
        project: Option<String>,
        #[arg(long, requires = "project")]
        role: Option<String>,
    },
    SetPassword {
        name: String,
        #[arg(long, env = "IMS_NEW_USER_PASSWORD")]
        password: String,
    },
    List,
}

#[derive(Subcommand, Debug)]
enum RoleCommand {
    Add {
        #[arg(long)]
        user: String,
        #[arg(long)]
        project: String,
        role: String,
    },
    Remove {
        #[arg(long)]
        user: String,
        #[arg(long)]
        project: String,
        role: String,
    },
    List,
}

fn by_name(name: &str) -> Named {
    Named::Name {
        name: name.to_string(),
        domain: DomainRef::Name("Default".into()),
    }
}

fn parse_resource(name: &str) -> anyhow::Result<QuotaResource> {
    QuotaResource::parse(name).with_context(|| {
        let names: Vec<&str> = QuotaResource::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown limit {name:?}: use one of {}", names.join(", "))
    })
}

/// A project by name (domain Default), else by id.
async fn find_project(app: &App, project: &str) -> anyhow::Result<ims_domain::Project> {
    let fail = |e: ims_core::ServiceError| anyhow::anyhow!("{e}");
    if let Some(p) = app
        .identity
        .find_project(&by_name(project))
        .await
        .map_err(fail)?
    {
        return Ok(p);
    }
    app.identity
        .find_project(&Named::Id(project.to_owned()))
        .await
        .map_err(fail)?
        .with_context(|| format!("no project {project:?}"))
}

fn parse_role(role: &str) -> anyhow::Result<Role> {
    Role::parse(role).with_context(|| format!("unknown role {role:?}: use admin, member or reader"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.node.load()?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    config.listen = bound;
    if let Some(url) = args.public_url {
        config.public_url = Some(url);
    }
    let app = Arc::new(
        App::open(config)
            .await
            .map_err(|e| anyhow::anyhow!("opening stores: {e}"))?,
    );
    let admin_password = std::env::var("IMS_ADMIN_PASSWORD").ok();
    if let Some(generated) = app
        .identity
        .bootstrap(admin_password.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        println!("Bootstrapped user 'admin' in project 'admin' with password: {generated}");
        println!("(shown once; set IMS_ADMIN_PASSWORD to choose it)");
    }
    let workers = app.start_workers(&bound.to_string());
    let prefetcher = app.start_prefetcher();
    let images = app.images.clone();
    tokio::spawn(async move {
        loop {
            match images.collect_garbage().await {
                Ok(report) if report != Default::default() => {
                    tracing::info!(?report, "garbage collected")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
            tokio::time::sleep(images.gc_interval()).await;
        }
    });
    let router = ims_api::router(app.clone());
    println!("ims listening on http://{bound}");
    std::io::stdout().flush()?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    workers.shutdown().await;
    if let Some(prefetcher) = prefetcher {
        prefetcher.abort();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    let config = args.node.load()?;
    let app = App::open(config)
        .await
        .map_err(|e| anyhow::anyhow!("opening stores: {e}"))?;
    let ids = &app.identity;
    let fail = |e: ims_core::ServiceError| anyhow::anyhow!("{e}");
    match args.command {
        AdminCommand::Project(ProjectCommand::Create { name }) => {
            let p = ids.create_project(&name).await.map_err(fail)?;
            println!("{}\t{}", p.id, p.name);
        }
        AdminCommand::Project(ProjectCommand::List) => {
            for p in ids.meta().list_projects().await? {
                println!("{}\t{}", p.id, p.name);
            }
        }
        AdminCommand::Project(ProjectCommand::SetLimit {
            project,
            resource,
            limit,
        }) => {
            let project = find_project(&app, &project).await?;
            app.images
                .set_project_limit(
                    &project.id,
                    parse_resource(&resource)?,
                    Some(Limit::from_signed(limit)),
                )
                .await
                .map_err(fail)?;
        }
        AdminCommand::Project(ProjectCommand::UnsetLimit { project, resource }) => {
            let project = find_project(&app, &project).await?;
            app.images
                .set_project_limit(&project.id, parse_resource(&resource)?, None)
                .await
                .map_err(fail)?;
        }
        AdminCommand::Project(ProjectCommand::Limits { project }) => {
            let project = find_project(&app, &project).await?;
            for u in app.images.quota_usage(&project.id).await.map_err(fail)? {
                let own = app
                    .images
                    .has_own_limit(&project.id, u.resource)
                    .await
                    .map_err(fail)?;
                println!(
                    "{}\t{}\t{}\t{}",
                    u.resource.as_str(),
                    u.limit.to_signed(),
                    u.usage,
                    if own { "project" } else { "default" }
                );
            }
        }
        AdminCommand::User(UserCommand::Create {
            name,
            password,
            project,
            role,
        }) => {
            let u = ids.create_user(&name, &password).await.map_err(fail)?;
            if let (Some(project), Some(role)) = (project, role) {
                ids.assign_role(
                    &by_name(&name),
                    &by_name(&project),
                    parse_role(&role)?,
                    true,
                )
                .await
                .map_err(fail)?;
            }
            println!("{}\t{}", u.id, u.name);
        }
        AdminCommand::User(UserCommand::SetPassword { name, password }) => {
            ids.set_password(&by_name(&name), &password)
                .await
                .map_err(fail)?;
        }
        AdminCommand::User(UserCommand::List) => {
            for u in ids.meta().list_users().await? {
                println!("{}\t{}", u.id, u.name);
            }
        }
        AdminCommand::Role(RoleCommand::Add {
            user,
            project,
            role,
        }) => {
            ids.assign_role(
                &by_name(&user),
                &by_name(&project),
                parse_role(&role)?,
                true,
            )
            .await
            .map_err(fail)?;
        }
        AdminCommand::Role(RoleCommand::Remove {
            user,
            project,
            role,
        }) => {
            ids.assign_role(
                &by_name(&user),
                &by_name(&project),
                parse_role(&role)?,
                false,
            )
            .await
            .map_err(fail)?;
        }
        AdminCommand::Role(RoleCommand::List) => {
            let meta = ids.meta();
            for (user_id, project_id, role) in meta.list_role_assignments().await? {
                let user = meta
                    .get_user(&user_id)
                    .await?
                    .map(|u| u.name)
                    .unwrap_or(user_id);
                let project = meta
                    .get_project(&project_id)
                    .await?
                    .map(|p| p.name)
                    .unwrap_or(project_id);
                println!("{user}\t{project}\t{}", role.as_str());
            }
        }
        AdminCommand::AccessKey(command) => access_key(&app, command).await?,
        AdminCommand::Gc => {
            let report = app.images.collect_garbage().await.map_err(fail)?;
            println!(
                "orphan blobs deleted: {}, abandoned writes removed: {}, stale uploads reset: {}",
                report.orphan_blobs_deleted,
                report.abandoned_writes_removed,
                report.stale_uploads_reset
            );
        }
    }
    Ok(())
}

async fn access_key(app: &App, command: AccessKeyCommand) -> anyhow::Result<()> {
    let fail = |e: ims_core::ServiceError| anyhow::anyhow!("{e}");
    let user_id = |name: String| async move {
        app.identity
            .find_user(&by_name(&name))
            .await
            .map_err(fail)?
            .map(|u| u.id)
            .with_context(|| format!("no user named {name:?}"))
    };
    match command {
        AccessKeyCommand::Create { user, description } => {
            let id = user_id(user).await?;
            let new = app
                .access_keys
                .create(&id, description.as_deref())
                .await
                .map_err(fail)?;
            println!("{}\t{}", new.key.access_key, new.secret);
        }
        AccessKeyCommand::List { user } => {
            let id = user_id(user).await?;
            for key in app.access_keys.list(&id).await.map_err(fail)? {
                println!(
                    "{}\t{}\t{}",
                    key.access_key,
                    key.created_at,
                    key.description.unwrap_or_default()
                );
            }
        }
        AccessKeyCommand::Delete { access_key } => {
            app.access_keys
                .delete(None, &access_key)
                .await
                .map_err(fail)?;
        }
    }
    Ok(())
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (mimalloc.h; libmimalloc-sys does
/// not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Process settings for the offline `ims img` commands, before any work starts:
/// - a closed stdout pipe (`ims img info x | head`) ends the process quietly, as it does any
///   Unix filter, instead of a panic in `println!` (Rust ignores SIGPIPE by default);
/// - no transparent huge pages: the converter's buffers are a few MiB each and freed memory
///   in a 2 MiB huge page stays resident (measured: +20–40 MiB peak RSS on 10 GiB converts);
/// - mimalloc returns freed pages to the OS after 1 ms instead of 1 s (v3's default), so the batches
///   recycled by the converter's workers do not pile up as retained memory.
fn tune_offline_process() {
    // SAFETY: the calls take plain integers and run before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Img(_) = cli.command {
        tune_offline_process();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Img(args) = cli.command {
        // Offline and synchronous: no async runtime (its worker threads would be idle).
        return finish(img::run(args));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::Admin(args) => admin(args).await.map(|()| ExitCode::SUCCESS),
            Command::Image(args) => client::run(args).await,
            Command::Img(args) => img::run(args),
        }
    });
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ims: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_number_is_mimallocs() {
        // mimalloc v3's default purge delay is 1000 ms (options.c): a different value here means
        // the option's position in `mi_option_t` moved and `tune_offline_process` sets another.
        // SAFETY: reads an option; no memory of ours is involved.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000);
    }
}

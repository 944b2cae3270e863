//! Wiring: opens the stores a [`Config`] names and builds the services on top of them.

use std::sync::Arc;

use ims_blob::buckets::Buckets;
use ims_jobs::JobStore;
use ims_jobs::runner::{Runner, RunnerConfig, RunnerHandle, Waker};
use ims_meta::MetaStore;
use ims_meta::cloudimages::{CloudImageStore, MemoryCloudImageStore};
use ims_meta::metadefs::MetadefStore;
use ims_meta::sql::SqlStore;

use crate::access_keys::{AccessKeyService, load_or_create_seal_key};
use crate::cache::{CacheService, ImageCache};
use crate::cloudimages::CloudImageService;
use crate::cloudjobs::{ImsJobHandler, ImsJobKind};
use crate::config::Config;
use crate::conversion::ConversionService;
use crate::cross_region::{CROSS_REGION_JOB_KIND, CrossRegionService};
use crate::error::{ServiceError, ServiceResult};
use crate::identity::IdentityService;
use crate::images::ImageService;
use crate::import::{Catalog, IMPORT_JOB_KIND, ImportService};
use crate::locations::{LOCATION_JOB_KIND, LocationService, LocationSettings};
use crate::metadefs::MetadefService;
use crate::stores::Stores;

/// Everything a node serves with.
pub struct App {
    pub config: Config,
    pub identity: Arc<IdentityService>,
    pub images: Arc<ImageService>,
    pub metadefs: Arc<MetadefService>,
    /// Users' S3 buckets for image import/export, when `[buckets]` is configured.
    pub buckets: Option<Arc<Buckets>>,
    pub access_keys: Arc<AccessKeyService>,
    /// Access keys and IMS job records (the IMS API's own store).
    pub cloud: Arc<dyn CloudImageStore>,
    pub cloud_images: Arc<CloudImageService>,
    /// Staging, import and the task views over jobs.
    pub imports: Arc<ImportService>,
    /// The v2.17 location API and its jobs.
    pub locations: Arc<LocationService>,
    /// Copies to peer regions (`[region]`).
    pub cross_region: Arc<CrossRegionService>,
    /// This node's image cache, when `[cache] enabled`.
    pub cache: Option<Arc<CacheService>>,
    waker: Waker,
}

impl App {
    /// Opens the configured database (running migrations) and store.
    pub async fn open(config: Config) -> ServiceResult<App> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ServiceError::internal(
                &format!("creating data dir {}", config.data_dir.display()),
                &e,
            )
        })?;
        let sql = Arc::new(SqlStore::connect(&config.database_url()).await?);
        let meta: Arc<dyn MetaStore> = sql.clone();
        let metadefs: Arc<dyn MetadefStore> = sql.clone();
        let jobs: Arc<dyn JobStore> = Arc::new(ims_jobs::sql::SqlJobStore::new(&sql));
        let cloud: Arc<dyn CloudImageStore> = sql;
        let stores = Stores::open(&config).await?;
        // Work files of conversions a crash interrupted; their jobs start over.
        ConversionService::new(&config.work_dir(), config.conversion.threads).sweep()?;
        let seal_key = load_or_create_seal_key(&config.access_key_seal_file())?;
        Self::with_job_store(config, meta, metadefs, stores, cloud, seal_key, jobs).await
    }

    /// Builds the services over given stores (the in-memory fakes in tests), with jobs kept in
    /// memory.
    pub async fn with_stores(
        config: Config,
        meta: Arc<dyn MetaStore>,
        metadefs: Arc<dyn MetadefStore>,
        stores: Stores,
        cloud: Arc<dyn CloudImageStore>,
        seal_key: [u8; 32],
    ) -> ServiceResult<App> {
        let jobs: Arc<dyn JobStore> = Arc::new(ims_jobs::memory::MemoryJobStore::new());
        Self::with_job_store(config, meta, metadefs, stores, cloud, seal_key, jobs).await
    }

    /// Builds the services over given stores, jobs included.
    pub async fn with_job_store(
        config: Config,
        meta: Arc<dyn MetaStore>,
        metadefs: Arc<dyn MetadefStore>,
        stores: Stores,
        cloud: Arc<dyn CloudImageStore>,
        seal_key: [u8; 32],
        jobs: Arc<dyn JobStore>,
    ) -> ServiceResult<App> {
        let metadefs = Arc::new(MetadefService::new(metadefs));
        metadefs.seed().await?;
        let identity = Arc::new(IdentityService::open(meta.clone(), config.token_ttl_secs).await?);
        let access_keys = Arc::new(AccessKeyService::new(
            cloud.clone(),
            meta.clone(),
            seal_key,
            config.ims.signature_max_skew_secs,
        ));
        let cache = if config.cache.enabled {
            let dir = config.cache_dir();
            let image_cache = ImageCache::open(&dir, config.cache.max_size).await?;
            tracing::info!(dir = %dir.display(), max_size = config.cache.max_size, "image cache enabled");
            Some(Arc::new(CacheService::new(
                Arc::new(image_cache),
                meta.clone(),
                &config.cache,
            )))
        } else {
            None
        };
        let mut image_service = ImageService::new(
            meta,
            Arc::new(stores),
            config.limits.clone(),
            config.gc.clone(),
        );
        image_service.cache = cache.clone();
        let image_service = image_service.with_locations(LocationSettings {
            config: config.locations.clone(),
            policy: crate::fetch::UrlPolicy {
                allowed_schemes: config.import.allowed_schemes.clone(),
                allowed_ports: config.import.allowed_ports.clone(),
                exempt_targets: config.import.exempt_targets.clone(),
            },
        });
        let images = Arc::new(image_service);
        let buckets = match &config.buckets {
            Some(connection) => Some(Arc::new(Buckets::new(connection.clone())?)),
            None => None,
        };
        let conversion = Arc::new(ConversionService::new(
            &config.work_dir(),
            config.conversion.threads,
        ));
        let waker = Waker::new();
        let cross_region = Arc::new(CrossRegionService::new(
            images.clone(),
            jobs.clone(),
            waker.clone(),
            config.region.clone(),
        )?);
        let catalog = Catalog {
            region: config.region.name.clone(),
            public_url: config.public_url(),
        };
        let cloud_images = Arc::new(CloudImageService::new(
            images.clone(),
            config.ims.clone(),
            jobs.clone(),
            waker.clone(),
            buckets.clone(),
            conversion.clone(),
            cloud.clone(),
        ));
        let locations = Arc::new(LocationService::new(
            images.clone(),
            jobs.clone(),
            waker.clone(),
        ));
        let imports = Arc::new(ImportService::new(
            images.clone(),
            identity.clone(),
            jobs,
            waker.clone(),
            config.import.clone(),
            catalog,
            conversion,
        ));
        Ok(App {
            config,
            identity,
            images,
            metadefs,
            buckets,
            access_keys,
            cloud,
            cloud_images,
            imports,
            locations,
            cross_region,
            cache,
            waker,
        })
    }

    /// Starts this node's job workers (Glance imports, IMS jobs, cross-region copies); they
    /// share the job table with every node.
    pub fn start_workers(&self, node: &str) -> RunnerHandle {
        let config = RunnerConfig {
            concurrency: self.config.import.workers.max(1),
            ..RunnerConfig::new(node)
        };
        self.runner(config).start()
    }

    /// A runner with every job handler registered, woken by this app's submissions; tests use
    /// it with short leases.
    pub fn runner(&self, config: RunnerConfig) -> Runner {
        let mut runner = Runner::new(self.imports.jobs().clone(), config);
        runner.register(IMPORT_JOB_KIND, self.imports.handler());
        runner.register(CROSS_REGION_JOB_KIND, self.cross_region.handler());
        runner.register(LOCATION_JOB_KIND, self.locations.handler());
        let ims: Arc<dyn ims_jobs::runner::JobHandler> =
            Arc::new(ImsJobHandler::new(self.cloud_images.clone()));
        for kind in ImsJobKind::ALL {
            runner.register(kind.as_str(), ims.clone());
        }
        runner.with_waker(self.waker.clone())
    }

    /// Starts this node's cache prefetcher, if the cache is enabled.
    /// It runs at start, whenever an image is queued, and every `prefetch_interval_secs`.
    pub fn start_prefetcher(&self) -> Option<tokio::task::JoinHandle<()>> {
        let cache = self.cache.clone()?;
        let images = self.images.clone();
        Some(tokio::spawn(async move {
            loop {
                images.prefetch_queued().await;
                cache.wait_for_queue().await;
            }
        }))
    }

    /// In-memory stores (one per `[[stores]]` entry); for tests.
    pub async fn in_memory(config: Config) -> App {
        let meta: Arc<dyn MetaStore> = Arc::new(ims_meta::memory::MemoryStore::default());
        let metadefs: Arc<dyn MetadefStore> =
            Arc::new(ims_meta::metadefs::MemoryMetadefStore::new());
        let stores = Stores::in_memory(&config);
        let cloud: Arc<dyn CloudImageStore> = Arc::new(MemoryCloudImageStore::new());
        Self::with_stores(config, meta, metadefs, stores, cloud, rand::random())
            .await
            .expect("in-memory stores open")
    }
}

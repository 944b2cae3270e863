//! The services of `ims`: what the HTTP layer and the CLI call. They take typed input, enforce
//! policy and quotas, orchestrate the metadata and blob stores, and answer with domain values or
//! a [`ServiceError`] carrying a stable [`ErrorKind`](ims_domain::ErrorKind).

pub mod access_keys;
pub mod app;
pub mod bucketjobs;
pub mod cache;
pub mod cloudimages;
pub mod cloudjobs;
pub mod config;
pub mod conversion;
pub mod cross_region;
pub mod error;
pub mod fetch;
pub mod gc;
pub mod guest;
pub mod identity;
pub mod images;
pub mod import;
pub mod locations;
pub mod metadefs;
pub mod patch;
pub mod quotas;
pub mod sdk_signature;
pub mod stores;
pub mod upload;

pub use app::App;
pub use config::Config;
pub use error::{ServiceError, ServiceResult};

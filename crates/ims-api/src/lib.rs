//! The HTTP face of `ims`: the OpenStack Image API v2 under `/v2` (with Glance 33's semantics,
//! status codes and error bodies), the Huawei Cloud IMS API (`/v1`, `/v2/cloudimages`, `/v2.1`,
//! module `ims`) over the same images, and a Keystone v3 subset under `/identity`. Handlers parse
//! into typed input, call an `ims-core` service and map the result; nothing here touches a store.

mod access_keys;
mod body;
mod cache;
mod error;
mod identity;
mod images;
mod import;
mod ims;
mod json;
mod list;
mod members;
mod metadefs;
mod middleware;
mod versions;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post, put};
use ims_core::App;

pub use error::{Dialect, status_for};

/// What every handler can reach.
pub struct ApiState {
    pub app: Arc<App>,
    /// Base URL of this node as clients see it, without a trailing slash.
    pub public_url: String,
}

impl ApiState {
    /// Whether the node has several stores (Glance's multi-store: `stores` on images).
    pub fn multi_store(&self) -> bool {
        self.app.images.stores().is_multi()
    }

    /// How Glance's image views look on this node (stores, locations, direct URL).
    pub fn image_view(&self) -> json::ImageView<'_> {
        let stores = self.app.images.stores();
        let config = &self.app.config.locations;
        json::ImageView {
            multi_store: stores.is_multi(),
            http_store: stores.http().map(|h| h.id.as_str()),
            locations: config.show_multiple_locations,
            direct_url: config.show_image_direct_url,
        }
    }
}

pub type SharedState = Arc<ApiState>;

/// The whole HTTP surface of a node.
pub fn router(app: Arc<App>) -> Router {
    let public_url = app.config.public_url();
    let state: SharedState = Arc::new(ApiState { app, public_url });
    let v2 = Router::new()
        // `show_version` (`GET /{version}`): the versions document with 300, as at the root.
        .route("/", get(versions::root))
        .route("/images", get(images::list).post(images::create))
        .route("/images/", get(images::empty_id).delete(images::empty_id))
        .route(
            "/images/{id}",
            get(images::show)
                .patch(images::update)
                .delete(images::delete),
        )
        .route(
            "/images/{id}/file",
            put(images::upload).get(images::download),
        )
        .route("/images/{id}/stage", put(import::stage))
        .route("/images/{id}/import", post(import::import))
        .route("/images/{id}/tasks", get(import::image_tasks))
        .route(
            "/images/{id}/locations",
            get(images::list_locations).post(images::add_location),
        )
        .route("/tasks", get(import::list_tasks).post(import::create_task))
        .route("/tasks/{id}", get(import::show_task))
        .route("/images/{id}/actions/deactivate", post(images::deactivate))
        .route("/images/{id}/actions/reactivate", post(images::reactivate))
        .route(
            "/images/{id}/tags/{tag}",
            put(images::add_tag).delete(images::delete_tag),
        )
        .route(
            "/images/{id}/members",
            get(members::list).post(members::create),
        )
        .route(
            "/images/{id}/members/{member}",
            get(members::show)
                .put(members::update)
                .delete(members::delete),
        )
        .route("/schemas/{name}", get(versions::schema))
        .route("/schemas/metadefs/{name}", get(versions::metadef_schema))
        .route("/info/import", get(import::info_import))
        .route("/info/stores", get(versions::info_stores))
        .route("/info/stores/detail", get(versions::info_stores_detail))
        .route("/stores/{store}/{id}", delete(images::delete_from_store))
        .route("/info/usage", get(images::usage))
        .route("/cache", get(cache::list).delete(cache::clear))
        .route("/cache/{id}", put(cache::queue).delete(cache::delete))
        .nest("/metadefs", metadefs::router());
    let v2 = ims::v2_routes(v2).fallback(versions::v2_not_found);
    Router::new()
        .route("/", get(versions::root))
        .route("/versions", get(versions::versions))
        .route("/healthcheck", get(versions::healthcheck))
        .nest("/v2", v2)
        .nest("/v1", ims::v1_router())
        .nest("/v2.1", ims::v21_router())
        .nest("/identity", identity::router())
        .fallback(versions::unknown_version)
        .layer(axum::middleware::from_fn(
            middleware::reject_unexpected_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::sdk_signature,
        ))
        .layer(axum::middleware::from_fn(middleware::request_id))
        .with_state(state)
}

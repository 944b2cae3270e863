//! Per-project limits (Glance's unified limits): the effective limit of each resource (a
//! project's own limit, else the configured default), the usage `/v2/info/usage` reports, the
//! checks the upload, stage, create and import paths make where Glance makes them, and the byte
//! budgets uploads and stages are held to while they stream.

use ims_blob::BlobError;
use ims_domain::quota::{self, MIB};
use ims_domain::{Limit, QuotaResource};

use crate::error::ServiceResult;
use crate::images::ImageService;

/// One resource of a project, in the resource's unit (MiB for sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaUsage {
    pub resource: QuotaResource,
    pub limit: Limit,
    pub usage: u64,
}

/// How many more bytes a stream may add before it takes its project over a size limit.
#[derive(Debug, Clone)]
pub(crate) struct ByteBudget {
    project_id: String,
    resource: QuotaResource,
    /// The limit, in MiB.
    limit: u64,
    /// Bytes used before the stream started.
    used: u64,
}

impl ByteBudget {
    /// Refused once the stream's `streamed` bytes take the usage past the limit (counted in
    /// bytes: a stream never ends over the limit).
    pub(crate) fn check(&self, streamed: u64) -> ServiceResult<()> {
        let allowed = self.limit.saturating_mul(MIB);
        if self.used.saturating_add(streamed) <= allowed {
            return Ok(());
        }
        Err(quota::over_limit(
            &self.project_id,
            self.resource,
            self.limit,
            self.resource.units(self.used),
            streamed.div_ceil(MIB),
        )
        .into())
    }
}

impl ImageService {
    /// The limit that applies to `project_id` for `resource`.
    pub async fn project_limit(
        &self,
        project_id: &str,
        resource: QuotaResource,
    ) -> ServiceResult<Limit> {
        let own = self.meta.project_limits(project_id).await?;
        Ok(own
            .into_iter()
            .find(|(r, _)| *r == resource)
            .map_or_else(|| self.limits.default_limit(resource), |(_, l)| l))
    }

    /// Sets (`Some`) or removes (`None`, back to the configured default) a project's own limit.
    pub async fn set_project_limit(
        &self,
        project_id: &str,
        resource: QuotaResource,
        limit: Option<Limit>,
    ) -> ServiceResult<()> {
        Ok(self
            .meta
            .set_project_limit(project_id, resource, limit)
            .await?)
    }

    /// Whether `project_id` has its own limit of `resource` (else the default applies).
    pub async fn has_own_limit(
        &self,
        project_id: &str,
        resource: QuotaResource,
    ) -> ServiceResult<bool> {
        let own = self.meta.project_limits(project_id).await?;
        Ok(own.iter().any(|(r, _)| *r == resource))
    }

    /// Every resource's limit and usage, for `/v2/info/usage`.
    pub async fn quota_usage(&self, project_id: &str) -> ServiceResult<Vec<QuotaUsage>> {
        let mut out = Vec::with_capacity(QuotaResource::ALL.len());
        for resource in QuotaResource::ALL {
            out.push(QuotaUsage {
                resource,
                limit: self.project_limit(project_id, resource).await?,
                usage: resource.units(self.raw_usage(project_id, resource).await?),
            });
        }
        Ok(out)
    }

    /// Refuses with Glance's 413 when `project_id`'s usage of `resource` plus `delta` (in the
    /// resource's unit) is over its limit.
    pub(crate) async fn enforce_quota(
        &self,
        project_id: &str,
        resource: QuotaResource,
        delta: u64,
    ) -> ServiceResult<()> {
        let limit = self.project_limit(project_id, resource).await?;
        if limit == Limit::Unlimited {
            return Ok(());
        }
        let usage = resource.units(self.raw_usage(project_id, resource).await?);
        Ok(quota::check(project_id, resource, limit, usage, delta)?)
    }

    /// The budget a stream adding to `resource` (a size) of `project_id` is held to; `None`
    /// when the project has no limit.
    pub(crate) async fn byte_budget(
        &self,
        project_id: &str,
        resource: QuotaResource,
    ) -> ServiceResult<Option<ByteBudget>> {
        let Limit::At(limit) = self.project_limit(project_id, resource).await? else {
            return Ok(None);
        };
        Ok(Some(ByteBudget {
            project_id: project_id.to_owned(),
            resource,
            limit,
            used: self.raw_usage(project_id, resource).await?,
        }))
    }

    /// Usage of one resource in bytes (sizes) or images (counts).
    async fn raw_usage(&self, project_id: &str, resource: QuotaResource) -> ServiceResult<u64> {
        let usage = self.meta.project_usage(project_id).await?;
        let nonneg = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(match resource {
            QuotaResource::ImageSizeTotal => nonneg(usage.image_size_total),
            QuotaResource::ImageCountTotal => nonneg(usage.image_count_total),
            QuotaResource::ImageCountUploading => nonneg(usage.image_count_uploading),
            QuotaResource::ImageStageTotal => {
                let mut total = nonneg(usage.copying_size);
                for id in &usage.staged_images {
                    total = total.saturating_add(self.staged_size(*id).await?.unwrap_or(0));
                }
                total
            }
        })
    }

    /// Bytes of the data staged for `id`, if there is any.
    pub(crate) async fn staged_size(&self, id: uuid::Uuid) -> ServiceResult<Option<u64>> {
        let key = crate::import::staging_key(id);
        match self.stores.staging().size(&key).await {
            Ok(size) => Ok(size),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_bytes_against_the_mib_limit() {
        let budget = ByteBudget {
            project_id: "p".into(),
            resource: QuotaResource::ImageStageTotal,
            limit: 2,
            used: MIB / 2,
        };
        assert!(budget.check(MIB + MIB / 2).is_ok());
        let err = budget.check(MIB + MIB / 2 + 1).unwrap_err();
        assert_eq!(err.kind, ims_domain::ErrorKind::QuotaExceeded);
        assert!(
            err.message.contains(
                "image_stage_total is over limit of 2 due to current usage 0 and delta 2"
            ),
            "{}",
            err.message
        );
    }
}

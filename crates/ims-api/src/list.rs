//! `GET /v2/images` query parameters → [`ImageListQuery`], with Glance's rules and messages,
//! and the `first`/`next` links of a page.

use ims_domain::query::{
    CmpOp, MAX_LIST_LIMIT, MatchField, MemberStatusFilter, SortDir, SortKey, TimeField,
    VisibilityFilter,
};
use ims_domain::{ImageListQuery, ListScope, MemberStatus, Visibility};
use time::format_description::well_known::Iso8601;

use crate::error::{ApiError, ApiResult};

/// Parameters that are not custom-property filters.
const KNOWN: &[&str] = &[
    "limit",
    "marker",
    "sort_key",
    "sort_dir",
    "sort",
    "visibility",
    "member_status",
    "name",
    "id",
    "status",
    "container_format",
    "disk_format",
    "owner",
    "checksum",
    "os_hash_value",
    "protected",
    "os_hidden",
    "created_at",
    "updated_at",
    "size_min",
    "size_max",
    "tag",
    "changes-since",
];

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

fn parse_bool(key: &str, value: &str) -> ApiResult<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(format!(
            "Invalid value '{value}' for parameter '{key}': expected true or false"
        ))),
    }
}

/// Splits an `in:a,b,"c,d"` list; quoted values may contain commas.
fn split_in_list(list: &str) -> ApiResult<Vec<String>> {
    let mut values = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if current.is_empty() && !quoted => quoted = true,
            '"' if quoted => {
                quoted = false;
                if chars.peek().is_some_and(|n| *n != ',') {
                    return Err(bad("Invalid filter value: a quote must end a value"));
                }
            }
            ',' if !quoted => values.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if quoted {
        return Err(bad("Invalid filter value: unterminated quote"));
    }
    values.push(current);
    Ok(values)
}

fn match_values(field: MatchField, value: &str) -> ApiResult<Vec<String>> {
    let in_list = matches!(
        field,
        MatchField::Name
            | MatchField::Id
            | MatchField::Status
            | MatchField::ContainerFormat
            | MatchField::DiskFormat
    );
    if in_list && let Some(list) = value.strip_prefix("in:") {
        return split_in_list(list);
    }
    if in_list && let Some(v) = value.strip_prefix("eq:") {
        return Ok(vec![v.to_string()]);
    }
    Ok(vec![value.to_string()])
}

fn parse_time_filter(key: &str, value: &str) -> ApiResult<(CmpOp, time::OffsetDateTime)> {
    let (op, date) = match value.split_once(':') {
        Some((op, rest)) if op.chars().all(|c| c.is_ascii_alphabetic()) => (
            CmpOp::parse(op).ok_or_else(|| bad(format!("Invalid operator '{op}' for {key}")))?,
            rest,
        ),
        _ => (CmpOp::Eq, value),
    };
    let t = time::OffsetDateTime::parse(date, &Iso8601::DEFAULT)
        .or_else(|_| {
            time::PrimitiveDateTime::parse(date, &Iso8601::DEFAULT).map(|p| p.assume_utc())
        })
        .map_err(|_| bad(format!("Invalid date format '{date}' for {key}")))?;
    Ok((op, t))
}

fn parse_sort(pairs: &[(String, String)]) -> ApiResult<Vec<(SortKey, SortDir)>> {
    let keys: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "sort_key")
        .map(|(_, v)| v.as_str())
        .collect();
    let dirs: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "sort_dir")
        .map(|(_, v)| v.as_str())
        .collect();
    let new_style: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "sort")
        .map(|(_, v)| v.as_str())
        .collect();
    let key =
        |k: &str| SortKey::parse(k.trim()).ok_or_else(|| bad(format!("Invalid sort key: {k}")));
    let dir = |d: &str| {
        SortDir::parse(d.trim()).ok_or_else(|| bad(format!("Invalid sort direction: {d}")))
    };
    if !new_style.is_empty() {
        if !keys.is_empty() || !dirs.is_empty() {
            return Err(bad(
                "The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'.",
            ));
        }
        let mut sort = Vec::new();
        for item in new_style.iter().flat_map(|s| s.split(',')) {
            let (k, d) = match item.split_once(':') {
                Some((k, d)) => (key(k)?, dir(d)?),
                None => (key(item)?, SortDir::Desc),
            };
            sort.push((k, d));
        }
        return Ok(sort);
    }
    if dirs.len() > 1 && dirs.len() != keys.len() {
        return Err(bad(
            "The number of sort_key and sort_dir values must match.",
        ));
    }
    if keys.is_empty() {
        return match dirs.first() {
            Some(d) => Ok(vec![(SortKey::CreatedAt, dir(d)?)]),
            None => Ok(Vec::new()),
        };
    }
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let d = dirs
                .get(i)
                .or(dirs.first())
                .map(|d| dir(d))
                .transpose()?
                .unwrap_or(SortDir::Desc);
            Ok((key(k)?, d))
        })
        .collect()
}

/// Parses a raw query string into a list query (scope is set by the service).
pub fn parse_list_query(raw: Option<&str>) -> ApiResult<ImageListQuery> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|_| bad("Invalid query string"))?;
    let mut q = ImageListQuery::new(ListScope::All);
    q.sort = parse_sort(&pairs)?;
    for (key, value) in &pairs {
        let field = match key.as_str() {
            "name" => Some(MatchField::Name),
            "id" => Some(MatchField::Id),
            "status" => Some(MatchField::Status),
            "container_format" => Some(MatchField::ContainerFormat),
            "disk_format" => Some(MatchField::DiskFormat),
            "owner" => Some(MatchField::Owner),
            "checksum" => Some(MatchField::Checksum),
            "os_hash_value" => Some(MatchField::OsHashValue),
            _ => None,
        };
        if let Some(field) = field {
            q.matches.push((field, match_values(field, value)?));
            continue;
        }
        match key.as_str() {
            "limit" => {
                let limit: i64 = value
                    .parse()
                    .map_err(|_| bad("limit param must be an integer"))?;
                if limit < 0 {
                    return Err(bad("limit param must be positive"));
                }
                q.limit = (limit as usize).min(MAX_LIST_LIMIT);
            }
            "marker" => {
                q.marker = Some(
                    uuid::Uuid::parse_str(value)
                        .map_err(|_| bad(format!("Marker {value} could not be found.")))?,
                )
            }
            "visibility" => {
                q.visibility = Some(match value.as_str() {
                    "all" => VisibilityFilter::All,
                    v => VisibilityFilter::Only(
                        Visibility::parse(v)
                            .ok_or_else(|| bad(format!("Invalid visibility value: {v}")))?,
                    ),
                })
            }
            "member_status" => {
                q.member_status = match value.as_str() {
                    "all" => MemberStatusFilter::All,
                    v => MemberStatusFilter::Only(
                        MemberStatus::parse(v)
                            .ok_or_else(|| bad(format!("Invalid status value: {v}")))?,
                    ),
                }
            }
            "protected" => q.protected = Some(parse_bool(key, value)?),
            "os_hidden" => q.os_hidden = Some(parse_bool(key, value)?),
            "created_at" | "updated_at" => {
                let field = if key == "created_at" {
                    TimeField::CreatedAt
                } else {
                    TimeField::UpdatedAt
                };
                let (op, t) = parse_time_filter(key, value)?;
                q.times.push((field, op, t));
            }
            "size" => {
                let n: i64 = value.parse().map_err(|_| {
                    bad(format!(
                        "Invalid value '{value}' for size: must be an integer"
                    ))
                })?;
                q.size_min = Some(n);
                q.size_max = Some(n);
            }
            "size_min" | "size_max" => {
                let n: i64 = value.parse().map_err(|_| {
                    bad(format!(
                        "Invalid value '{value}' for {key}: must be an integer"
                    ))
                })?;
                if key == "size_min" {
                    q.size_min = Some(n)
                } else {
                    q.size_max = Some(n)
                }
            }
            "tag" => q.tags.push(value.clone()),
            "changes-since" => {
                return Err(bad(
                    "The 'changes-since' filter is no longer available on v2.",
                ));
            }
            k if KNOWN.contains(&k) => {}
            _ => q.properties.push((key.clone(), value.clone())),
        }
    }
    Ok(q)
}

/// `first` and, for a full page, `next` links: the query repeated without/with a new marker.
pub fn page_links(
    raw: Option<&str>,
    page_len: usize,
    limit: usize,
    last_id: Option<uuid::Uuid>,
) -> (String, Option<String>) {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).unwrap_or_default();
    let rest: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "marker").collect();
    let encode =
        |pairs: &[(String, String)]| serde_urlencoded::to_string(pairs).unwrap_or_default();
    let first = if rest.is_empty() {
        "/v2/images".to_string()
    } else {
        format!("/v2/images?{}", encode(&rest))
    };
    let next = match last_id {
        Some(id) if page_len > 0 && page_len >= limit => {
            let mut with_marker = rest.clone();
            with_marker.push(("marker".into(), id.to_string()));
            Some(format!("/v2/images?{}", encode(&with_marker)))
        }
        _ => None,
    };
    (first, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_with_quotes() {
        assert_eq!(
            split_in_list(r#"a,"b,c",d"#).unwrap(),
            vec!["a", "b,c", "d"]
        );
        assert!(split_in_list(r#""open"#).is_err());
    }

    #[test]
    fn sort_syntaxes() {
        let q = parse_list_query(Some("sort_key=name&sort_key=size&sort_dir=asc")).unwrap();
        assert_eq!(
            q.sort,
            vec![(SortKey::Name, SortDir::Asc), (SortKey::Size, SortDir::Asc)]
        );
        let q = parse_list_query(Some("sort=name:asc,size")).unwrap();
        assert_eq!(
            q.sort,
            vec![
                (SortKey::Name, SortDir::Asc),
                (SortKey::Size, SortDir::Desc)
            ]
        );
        assert!(parse_list_query(Some("sort=name&sort_key=size")).is_err());
        assert!(parse_list_query(Some("sort_key=bogus")).is_err());
        assert!(
            parse_list_query(Some(
                "sort_key=name&sort_key=size&sort_dir=asc&sort_dir=desc&sort_dir=asc"
            ))
            .is_err()
        );
    }

    #[test]
    fn filters() {
        let q = parse_list_query(Some("name=in:a,b&tag=x&tag=y&foo=bar&created_at=gte:2026-01-01T00:00:00Z&size_min=5&limit=5000")).unwrap();
        assert_eq!(
            q.matches,
            vec![(MatchField::Name, vec!["a".to_string(), "b".to_string()])]
        );
        assert_eq!(q.tags, vec!["x", "y"]);
        assert_eq!(q.properties, vec![("foo".to_string(), "bar".to_string())]);
        assert_eq!(q.times[0].1, CmpOp::Gte);
        assert_eq!(q.size_min, Some(5));
        assert_eq!(q.limit, MAX_LIST_LIMIT);
        for bad_query in [
            "limit=-1",
            "limit=x",
            "visibility=bogus",
            "member_status=x",
            "protected=maybe",
            "created_at=zz:2026",
            "created_at=notadate",
            "size_max=big",
            "changes-since=2026",
            "marker=nope",
        ] {
            assert!(parse_list_query(Some(bad_query)).is_err(), "{bad_query}");
        }
    }

    #[test]
    fn links() {
        let id = uuid::Uuid::nil();
        let (first, next) = page_links(Some("limit=1&marker=abc&sort=name:asc"), 1, 1, Some(id));
        assert_eq!(first, "/v2/images?limit=1&sort=name%3Aasc");
        assert_eq!(
            next.unwrap(),
            format!("/v2/images?limit=1&sort=name%3Aasc&marker={id}")
        );
        assert_eq!(
            page_links(None, 0, 25, None),
            ("/v2/images".to_string(), None)
        );
    }
}

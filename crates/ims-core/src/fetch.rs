//! Fetching import URLs (web-download) without becoming a proxy into the operator's network.
//!
//! Glance's `import_filtering_opts` checks the URL text; that is not enough (CVE-2026-34881): a
//! host name can resolve to 127.0.0.1, `0x7f000001` and `[::ffff:127.0.0.1]` are loopback too, and
//! a redirect can point anywhere. Here every URL — the first and each redirect target — is parsed
//! by the WHATWG rules (which turn decimal, hex and octal IPv4 forms into dotted quads), its scheme
//! and port checked against allow-lists, its host resolved, and refused if *any* resolved address
//! is loopback, private, link-local, or otherwise not a public unicast address (IPv4-mapped and
//! IPv4-compatible IPv6 forms are judged as the IPv4 address they carry). The connection then goes
//! to the address that was checked (pinned), so a second DNS answer cannot change the target.
//! The operator can exempt exact socket addresses (tests use a loopback file server that way).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

/// Redirects followed before giving up; browsers allow 20, an image URL needs few.
pub const MAX_REDIRECTS: usize = 5;
/// How long connecting to the source may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest URL accepted (Glance's `uri` schema has no limit; 2 KiB is a practical one).
pub const MAX_URL_LEN: usize = 2048;

/// What may be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Lower-case schemes, e.g. `http`, `https`.
    pub allowed_schemes: Vec<String>,
    /// Ports a URL may name (explicitly or by its scheme's default).
    pub allowed_ports: Vec<u16>,
    /// Exact addresses allowed even though they are not public (with their port).
    pub exempt_targets: Vec<SocketAddr>,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        UrlPolicy {
            allowed_schemes: vec!["http".into(), "https".into()],
            allowed_ports: vec![80, 443],
            exempt_targets: Vec::new(),
        }
    }
}

/// Why a URL was refused or could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("URL is not valid: {0}")]
    ParsingUrl(String),
    #[error("URL scheme {0:?} is not allowed")]
    SchemeNotAllowed(String),
    #[error("URL port {0} is not allowed")]
    PortNotAllowed(u16),
    #[error("URL has no host")]
    NoHost,
    #[error("resolving {host}: {source}")]
    Resolving {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("{host} resolves to {addr}, which is not a public address")]
    ForbiddenAddress { host: String, addr: IpAddr },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("redirect without a valid Location")]
    BadRedirect,
    #[error("requesting {url}: {source}")]
    Requesting {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server answered {status}")]
    Status { status: u16 },
}

/// Whether `ip` is a public unicast address (the only kind fetched without an exemption).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, RFC 6598
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0100 && ip.segments()[1..4] == [0, 0, 0]) // discard-only
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// A URL that passed the policy, with the address to connect to.
#[derive(Debug, Clone)]
pub struct CheckedUrl {
    pub url: Url,
    pub addr: SocketAddr,
}

/// Parses and checks `text` against `policy`, resolving its host.
pub async fn check_url(policy: &UrlPolicy, text: &str) -> Result<CheckedUrl, FetchError> {
    if text.len() > MAX_URL_LEN {
        return Err(FetchError::ParsingUrl(format!(
            "longer than {MAX_URL_LEN} bytes"
        )));
    }
    let url = Url::parse(text).map_err(|e| FetchError::ParsingUrl(e.to_string()))?;
    check_parsed(policy, url).await
}

async fn check_parsed(policy: &UrlPolicy, url: Url) -> Result<CheckedUrl, FetchError> {
    let scheme = url.scheme().to_ascii_lowercase();
    if !policy.allowed_schemes.contains(&scheme) {
        return Err(FetchError::SchemeNotAllowed(scheme));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| FetchError::SchemeNotAllowed(scheme.clone()))?;
    if !policy.allowed_ports.contains(&port) {
        return Err(FetchError::PortNotAllowed(port));
    }
    let host = url.host().ok_or(FetchError::NoHost)?;
    let addrs: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|source| FetchError::Resolving {
                host: name.to_owned(),
                source,
            })?
            .collect(),
    };
    let host_text = url.host_str().unwrap_or_default().to_owned();
    // Every answer must pass: refusing only the bad ones would let a name with one public and
    // one private address through on whichever the resolver orders first next time.
    for addr in &addrs {
        if !is_public(addr.ip()) && !policy.exempt_targets.contains(addr) {
            return Err(FetchError::ForbiddenAddress {
                host: host_text,
                addr: addr.ip(),
            });
        }
    }
    let addr = *addrs
        .first()
        .ok_or(FetchError::NoAddress { host: host_text })?;
    Ok(CheckedUrl { url, addr })
}

/// GETs `text` under `policy`, following up to [`MAX_REDIRECTS`] redirects, each re-checked
/// and each connection pinned to the checked address. Returns the successful response.
pub async fn open_url(policy: &UrlPolicy, text: &str) -> Result<reqwest::Response, FetchError> {
    let mut checked = check_url(policy, text).await?;
    for _ in 0..=MAX_REDIRECTS {
        let response = get_pinned(&checked).await?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or(FetchError::BadRedirect)?;
            let next = checked
                .url
                .join(location)
                .map_err(|_| FetchError::BadRedirect)?;
            checked = check_parsed(policy, next).await?;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                status: status.as_u16(),
            });
        }
        return Ok(response);
    }
    Err(FetchError::TooManyRedirects)
}

/// One GET of a checked URL, connecting only to its checked address and following no redirect.
/// Fetches `text` under `policy` with `X-Auth-Token: token` (another Glance's API, for
/// `glance-download`). Redirects are refused rather than followed, so the token never travels
/// to an address other than the one checked.
pub async fn open_url_with_token(
    policy: &UrlPolicy,
    text: &str,
    token: &str,
) -> Result<reqwest::Response, FetchError> {
    let checked = check_url(policy, text).await?;
    let response = get_pinned_with(&checked, Some(token)).await?;
    let status = response.status();
    if status.is_redirection() {
        return Err(FetchError::BadRedirect);
    }
    if !status.is_success() {
        return Err(FetchError::Status {
            status: status.as_u16(),
        });
    }
    Ok(response)
}

async fn get_pinned(checked: &CheckedUrl) -> Result<reqwest::Response, FetchError> {
    get_pinned_with(checked, None).await
}

async fn get_pinned_with(
    checked: &CheckedUrl,
    token: Option<&str>,
) -> Result<reqwest::Response, FetchError> {
    let requesting = |source| FetchError::Requesting {
        url: checked.url.to_string(),
        source,
    };
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .no_proxy();
    if let Some(url::Host::Domain(name)) = checked.url.host() {
        builder = builder.resolve(name, checked.addr);
    }
    let client = builder.build().map_err(requesting)?;
    let mut request = client.get(checked.url.clone());
    if let Some(token) = token {
        request = request.header("x-auth-token", token);
    }
    request.send().await.map_err(requesting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }
}

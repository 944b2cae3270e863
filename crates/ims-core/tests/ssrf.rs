//! The import-URL safety table: hostile URLs web-download must refuse, checked through
//! `fetch::open_url` against a loopback server that serves data and redirects.

use std::net::SocketAddr;

use ims_core::fetch::{FetchError, UrlPolicy, open_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback HTTP server: `/data` answers `hello`, `/to?<url>` redirects to `<url>`,
/// `/loop` redirects to itself.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let reply = if path == "/data" {
                    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                        .to_string()
                } else if let Some(target) = path.strip_prefix("/to?") {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                } else if path == "/loop" {
                    "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// The policy tests run with: the default, plus the file server's exact address exempted.
fn policy(server: SocketAddr) -> UrlPolicy {
    UrlPolicy {
        allowed_ports: vec![80, 443, server.port()],
        exempt_targets: vec![server],
        ..UrlPolicy::default()
    }
}

#[tokio::test]
async fn hostile_urls_are_refused() {
    let server = serve().await;
    let p = server.port();
    // Another loopback port, allowed by the port list but not exempt.
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let q = other.local_addr().unwrap().port();
    let policy = UrlPolicy {
        allowed_ports: vec![80, 443, p, q],
        ..policy(server)
    };
    let table: Vec<(String, &str)> = vec![
        (
            format!("http://127.0.0.1:{p}/to?http://127.0.0.1:{q}/data"),
            "forbidden",
        ),
        (
            format!("http://127.0.0.1:{p}/to?http://0x7f000001:{q}/data"),
            "forbidden",
        ),
        (
            format!("http://127.0.0.1:{p}/to?http://[::ffff:127.0.0.1]:{p}/data"),
            "forbidden",
        ),
        (
            format!("http://127.0.0.1:{p}/to?http://169.254.169.254/latest/meta-data/"),
            "forbidden",
        ),
        (
            format!("http://127.0.0.1:{p}/to?file:///etc/passwd"),
            "scheme",
        ),
        (
            format!("http://127.0.0.1:{p}/to?http://127.0.0.1:22/"),
            "port",
        ),
        (format!("http://127.0.0.1:{p}/loop"), "redirects"),
        (format!("http://127.0.0.1:{q}/data"), "forbidden"),
        ("http://127.0.0.1/data".into(), "forbidden"),
        ("http://0x7f000001/data".into(), "forbidden"),
        ("http://0x7f.0.0.1/data".into(), "forbidden"),
        ("http://2130706433/data".into(), "forbidden"),
        ("http://017700000001/data".into(), "forbidden"),
        ("http://0177.0.0.1/data".into(), "forbidden"),
        ("http://127.1/data".into(), "forbidden"),
        ("http://[::ffff:127.0.0.1]/data".into(), "forbidden"),
        ("http://[::ffff:7f00:1]/data".into(), "forbidden"),
        ("http://[::1]/data".into(), "forbidden"),
        ("http://[::127.0.0.1]/data".into(), "forbidden"),
        ("http://[64:ff9b::7f00:1]/data".into(), "forbidden"),
        ("http://[2002:7f00:1::]/data".into(), "forbidden"),
        ("http://[fe80::1]/data".into(), "forbidden"),
        ("http://0.0.0.0/data".into(), "forbidden"),
        ("http://localhost/data".into(), "forbidden"),
        (format!("http://localhost:{q}/data"), "forbidden"),
        ("http://LOCALHOST./data".into(), "forbidden-or-resolve"),
        ("http://10.0.0.1/data".into(), "forbidden"),
        ("http://172.16.0.1/data".into(), "forbidden"),
        ("http://192.168.0.1/data".into(), "forbidden"),
        ("http://100.64.0.1/data".into(), "forbidden"),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "forbidden",
        ),
        ("http://example.com:22/".into(), "port"),
        ("http://example.com:8080/".into(), "port"),
        ("https://example.com:6443/".into(), "port"),
        ("ftp://example.com/image".into(), "scheme"),
        ("file:///etc/passwd".into(), "scheme"),
        ("gopher://127.0.0.1/".into(), "scheme"),
        ("not a url".into(), "parse"),
    ];
    let mut report = String::new();
    for (url, expected) in &table {
        let outcome = open_url(&policy, url).await;
        let kind = match &outcome {
            Ok(_) => "ALLOWED",
            Err(FetchError::ForbiddenAddress { .. }) => "forbidden",
            Err(FetchError::SchemeNotAllowed(_)) => "scheme",
            Err(FetchError::PortNotAllowed(_)) => "port",
            Err(FetchError::TooManyRedirects) => "redirects",
            Err(FetchError::ParsingUrl(_)) | Err(FetchError::NoHost) => "parse",
            Err(FetchError::Resolving { .. }) | Err(FetchError::NoAddress { .. }) => "resolve",
            Err(_) => "other",
        };
        report.push_str(&format!("{url:<70} {kind}\n"));
        let ok = match *expected {
            // Resolvers differ on the trailing-dot form; refused either way.
            "forbidden-or-resolve" => kind == "forbidden" || kind == "resolve",
            e => kind == e,
        };
        assert!(
            ok,
            "{url}: expected {expected}, got {kind} ({:?})",
            outcome.err()
        );
    }
    eprintln!("{report}");
}

#[tokio::test]
async fn the_exempt_file_server_is_fetched_and_its_redirects_followed() {
    let server = serve().await;
    let p = server.port();
    let policy = policy(server);
    for url in [
        format!("http://127.0.0.1:{p}/data"),
        format!("http://127.0.0.1:{p}/to?/data"),
        format!("http://127.0.0.1:{p}/to?http://127.0.0.1:{p}/data"),
    ] {
        let response = open_url(&policy, &url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello", "{url}");
    }
    let err = open_url(&policy, &format!("http://127.0.0.1:{p}/missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Status { status: 404 }), "{err}");
    // Without the exemption the same server is loopback and refused.
    let strict = UrlPolicy {
        allowed_ports: vec![p],
        ..UrlPolicy::default()
    };
    let err = open_url(&strict, &format!("http://127.0.0.1:{p}/data"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::ForbiddenAddress { .. }), "{err}");
}

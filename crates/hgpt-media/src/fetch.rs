//! Guarded downloads of http(s) URLs named in plans: every hop's host is
//! resolved here, every address checked, and the connection pinned to the
//! checked addresses so that DNS rebinding cannot reach a private address.

use crate::ip::blocked_reason;
use bytes::{Bytes, BytesMut};
use hgpt_core::backend::MediaError;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

/// How many redirects a download follows.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// A downloaded body.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// The body.
    pub bytes: Bytes,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The URL of the last hop.
    pub url: Url,
}

/// Downloads under an address policy, a size cap and a timeout.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    /// Skip the address checks.
    pub allow_private: bool,
    /// Refuse bodies larger than this.
    pub max_bytes: u64,
    /// Limit on the whole download, redirects included.
    pub timeout: Duration,
    /// Addresses allowed despite the policy (tests only).
    #[cfg(test)]
    pub trusted: Vec<IpAddr>,
}

fn refused(reference: &str, reason: impl Into<String>) -> MediaError {
    MediaError::Refused {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

fn io_error(reference: &str, message: impl Into<String>) -> MediaError {
    MediaError::Io {
        reference: reference.to_string(),
        message: message.into(),
    }
}

/// A resolver that resolves nothing: every host a client may reach is pinned
/// with `resolve_to_addrs`, so any other lookup is a bug and must fail.
struct NoResolver;

impl Resolve for NoResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(
            async move { Err::<Addrs, _>(format!("unpinned DNS lookup of {host} refused").into()) },
        )
    }
}

impl Fetcher {
    /// Download `url` (the reference as given, for error messages).
    pub async fn fetch(&self, reference: &str, url: Url) -> Result<Fetched, MediaError> {
        match tokio::time::timeout(self.timeout, self.follow(reference, url)).await {
            Ok(result) => result,
            Err(_) => Err(io_error(
                reference,
                format!("download timed out after {:?}", self.timeout),
            )),
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.allow_private {
            return Ok(());
        }
        #[cfg(test)]
        if self.trusted.contains(&ip) {
            return Ok(());
        }
        blocked_reason(ip).map_or(Ok(()), Err)
    }

    /// Check a hop's scheme and host; for a domain, resolve it and return the
    /// checked addresses to pin the connection to.
    async fn check_hop(
        &self,
        reference: &str,
        url: &Url,
    ) -> Result<Option<(String, Vec<SocketAddr>)>, MediaError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(
                reference,
                format!("scheme {:?} is not allowed", url.scheme()),
            ));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let refuse_ip = |ip: IpAddr, reason: &str| {
            refused(reference, format!("{url} reaches {reason} address {ip}"))
        };
        match url.host() {
            None => Err(refused(reference, format!("{url} has no host"))),
            Some(Host::Ipv4(ip)) => self
                .check_ip(ip.into())
                .map_err(|r| refuse_ip(ip.into(), r))
                .map(|()| None),
            Some(Host::Ipv6(ip)) => self
                .check_ip(ip.into())
                .map_err(|r| refuse_ip(ip.into(), r))
                .map(|()| None),
            Some(Host::Domain(domain)) => {
                let lookup = domain.trim_end_matches('.');
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup, port))
                    .await
                    .map_err(|e| io_error(reference, format!("cannot resolve {domain}: {e}")))?
                    .collect();
                if addrs.is_empty() {
                    return Err(io_error(reference, format!("{domain} has no addresses")));
                }
                for addr in &addrs {
                    self.check_ip(addr.ip())
                        .map_err(|r| refuse_ip(addr.ip(), r))?;
                }
                Ok(Some((domain.to_string(), addrs)))
            }
        }
    }

    async fn follow(&self, reference: &str, mut url: Url) -> Result<Fetched, MediaError> {
        let mut redirects = 0;
        loop {
            let pinned = self.check_hop(reference, &url).await?;
            let mut builder = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(self.timeout)
                .timeout(self.timeout)
                .user_agent(concat!("hgpt/", env!("CARGO_PKG_VERSION")))
                .dns_resolver(Arc::new(NoResolver));
            if let Some((domain, addrs)) = &pinned {
                builder = builder.resolve_to_addrs(domain, addrs);
            }
            let client = builder
                .build()
                .map_err(|e| io_error(reference, format!("cannot build HTTP client: {e}")))?;
            let mut response = client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| io_error(reference, format!("request to {url} failed: {e}")))?;
            let status = response.status();
            if status.is_redirection()
                && let Some(location) = response.headers().get(LOCATION)
            {
                if redirects == MAX_REDIRECTS {
                    return Err(refused(
                        reference,
                        format!("more than {MAX_REDIRECTS} redirects"),
                    ));
                }
                redirects += 1;
                let location = location
                    .to_str()
                    .map_err(|_| refused(reference, "redirect location is not ASCII"))?;
                url = url
                    .join(location)
                    .map_err(|e| refused(reference, format!("bad redirect {location:?}: {e}")))?;
                tracing::debug!(reference, %url, "following redirect");
                continue;
            }
            if !status.is_success() {
                return Err(io_error(reference, format!("{url} answered HTTP {status}")));
            }
            if let Some(length) = response.content_length()
                && length > self.max_bytes
            {
                return Err(self.too_large(reference));
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut body = BytesMut::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| io_error(reference, format!("reading {url} failed: {e}")))?
            {
                if (body.len() + chunk.len()) as u64 > self.max_bytes {
                    return Err(self.too_large(reference));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Fetched {
                bytes: body.freeze(),
                content_type,
                url,
            });
        }
    }

    fn too_large(&self, reference: &str) -> MediaError {
        refused(
            reference,
            format!("download is larger than the {}-byte limit", self.max_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback server answering every request with `response`, counting hits.
    async fn serve(bind: &str, response: String) -> Option<(SocketAddr, Arc<AtomicUsize>)> {
        let listener = TcpListener::bind(bind).await.ok()?;
        let addr = listener.local_addr().ok()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Some((addr, hits))
    }

    fn redirect_to(location: &str) -> String {
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }

    fn fetcher(trusted: Vec<IpAddr>) -> Fetcher {
        Fetcher {
            allow_private: false,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(20),
            trusted,
        }
    }

    #[tokio::test]
    async fn every_redirect_hop_is_checked() {
        // The target listens on another loopback address that is not trusted.
        let Some((target, target_hits)) = serve(
            "127.0.0.2:0",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".into(),
        )
        .await
        else {
            eprintln!("cannot bind 127.0.0.2; skipping");
            return;
        };
        let (first, first_hits) = serve("127.0.0.1:0", redirect_to(&format!("http://{target}/x")))
            .await
            .unwrap();
        let fetcher = fetcher(vec!["127.0.0.1".parse().unwrap()]);
        let reference = format!("http://{first}/start");
        let err = fetcher
            .fetch(&reference, Url::parse(&reference).unwrap())
            .await
            .unwrap_err();
        match err {
            MediaError::Refused { reason, .. } => assert!(reason.contains("loopback"), "{reason}"),
            other => panic!("expected Refused, got {other:?}"),
        }
        assert_eq!(first_hits.load(Ordering::SeqCst), 1);
        assert_eq!(target_hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn redirect_to_a_checked_host_is_followed() {
        let (target, _) = serve(
            "127.0.0.1:0",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".into(),
        )
        .await
        .unwrap();
        let (first, _) = serve("127.0.0.1:0", redirect_to(&format!("http://{target}/x")))
            .await
            .unwrap();
        let fetcher = fetcher(vec!["127.0.0.1".parse().unwrap()]);
        let reference = format!("http://{first}/start");
        let fetched = fetcher
            .fetch(&reference, Url::parse(&reference).unwrap())
            .await
            .unwrap();
        assert_eq!(&fetched.bytes[..], b"hi");
        assert_eq!(fetched.url.port(), Some(target.port()));
    }

    #[tokio::test]
    async fn redirect_loops_stop() {
        // A server that redirects to itself forever.
        let (looping, hits) = serve("127.0.0.1:0", redirect_to("/again")).await.unwrap();
        let fetcher = fetcher(vec!["127.0.0.1".parse().unwrap()]);
        let reference = format!("http://{looping}/");
        let err = fetcher
            .fetch(&reference, Url::parse(&reference).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, MediaError::Refused { .. }), "{err:?}");
        assert_eq!(hits.load(Ordering::SeqCst), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn redirect_to_another_scheme_is_refused() {
        let (first, _) = serve("127.0.0.1:0", redirect_to("file:///etc/passwd"))
            .await
            .unwrap();
        let fetcher = fetcher(vec!["127.0.0.1".parse().unwrap()]);
        let reference = format!("http://{first}/");
        let err = fetcher
            .fetch(&reference, Url::parse(&reference).unwrap())
            .await
            .unwrap_err();
        match err {
            MediaError::Refused { reason, .. } => assert!(reason.contains("scheme"), "{reason}"),
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let fetcher = fetcher(Vec::new());
        let url = Url::parse("http://localhost:9/").unwrap();
        match fetcher.check_hop("r", &url).await {
            Err(MediaError::Refused { .. }) => {}
            // A sandbox without a resolver for localhost is not a failure of the check.
            Err(MediaError::Io { .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

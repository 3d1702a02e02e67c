//! Where the API is and how long to wait for it: a validated [`Endpoint`] (https, or http to
//! loopback only, so a token never crosses a network in clear text), the regions the SDK knows,
//! and the [`ClientOptions`] timeouts. Plain values with no I/O, shared by the API client, the
//! IAM token source and the settings; they depend on nothing else in the crate.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

/// The regions the vendor's SDK knows (`CodeArtsDeployRegion`).
pub const KNOWN_REGIONS: [&str; 9] = [
    "ap-southeast-3",
    "cn-south-1",
    "cn-east-3",
    "cn-east-2",
    "cn-north-1",
    "cn-north-4",
    "sa-brazil-1",
    "la-north-2",
    "tr-west-1",
];

/// Why an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("endpoint {url:?} is not a valid URL: {reason}")]
    Invalid {
        /// The text given.
        url: String,
        /// Parser message.
        reason: String,
    },
    /// Plain HTTP to something else than loopback would send tokens in clear text.
    #[error(
        "endpoint {0:?} uses http:// to a non-loopback host; use https:// (plain http is only allowed to 127.0.0.1, ::1 or localhost)"
    )]
    InsecureHttp(String),
    /// Only http and https.
    #[error("endpoint {0:?} must start with https:// (or http:// to a loopback address)")]
    Scheme(String),
    /// Unknown region id.
    #[error("unknown region {0:?}; known regions: {known}; for another one pass --endpoint", known = KNOWN_REGIONS.join(", "))]
    UnknownRegion(String),
}

/// A validated API base URL (scheme, host, port, optional path prefix; no query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Url,
}

impl Endpoint {
    /// Parses and checks an endpoint URL. A URL without a scheme gets `https://`, as in the SDK.
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_string()
        } else {
            format!("https://{text}")
        };
        let url = Url::parse(&with_scheme).map_err(|e| EndpointError::Invalid {
            url: text.to_string(),
            reason: e.to_string(),
        })?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => return Err(EndpointError::InsecureHttp(text.to_string())),
            _ => return Err(EndpointError::Scheme(text.to_string())),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(EndpointError::Invalid {
                url: text.to_string(),
                reason: "no host".into(),
            });
        }
        Ok(Self { url })
    }

    /// `https://codearts-deploy.{region}.myhuaweicloud.com` for a region the SDK knows.
    pub fn for_region(region: &str) -> Result<Self, EndpointError> {
        if !KNOWN_REGIONS.contains(&region) {
            return Err(EndpointError::UnknownRegion(region.to_string()));
        }
        Self::parse(&format!(
            "https://codearts-deploy.{region}.myhuaweicloud.com"
        ))
    }

    /// `host[:port]` as sent in `Host` and signed: the port only when it is not the default.
    pub fn host_header(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }

    /// The endpoint as text, without a trailing slash.
    pub fn as_str(&self) -> &str {
        self.url.as_str().trim_end_matches('/')
    }

    pub(crate) fn join(&self, path: &str, query: &str) -> Result<Url, url::ParseError> {
        let base = self.as_str();
        let full = if query.is_empty() {
            format!("{base}{path}")
        } else {
            format!("{base}{path}?{query}")
        };
        Url::parse(&full)
    }

    /// The path prefix of the endpoint (usually empty), prepended to API paths.
    pub(crate) fn path_prefix(&self) -> &str {
        self.url.path().trim_end_matches('/')
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Timeouts and pool settings, always set explicitly (never the library defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole request timeout, from sending to the end of the body.
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this, below common server keep-alives (60 s
    /// on many gateways), so we never send on a connection the server is about to close.
    pub pool_idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_only_to_loopback() {
        assert!(Endpoint::parse("http://127.0.0.1:8080").is_ok());
        assert!(Endpoint::parse("http://127.3.4.5").is_ok());
        assert!(Endpoint::parse("http://[::1]:9000").is_ok());
        assert!(Endpoint::parse("http://localhost:1").is_ok());
        assert!(matches!(
            Endpoint::parse("http://10.0.0.1"),
            Err(EndpointError::InsecureHttp(_))
        ));
        assert!(matches!(
            Endpoint::parse("http://example.com"),
            Err(EndpointError::InsecureHttp(_))
        ));
        assert!(matches!(
            Endpoint::parse("ftp://example.com"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(Endpoint::parse("https://codearts-deploy.cn-north-4.myhuaweicloud.com").is_ok());
    }

    #[test]
    fn scheme_defaults_to_https_and_host_keeps_non_default_port() {
        let e = Endpoint::parse("example.com:8443").expect("valid");
        assert_eq!(e.as_str(), "https://example.com:8443");
        assert_eq!(e.host_header(), "example.com:8443");
        let e = Endpoint::parse("https://example.com:443/").expect("valid");
        assert_eq!(e.host_header(), "example.com");
        let e = Endpoint::parse("http://[::1]:9000").expect("valid");
        assert_eq!(e.host_header(), "[::1]:9000");
    }

    #[test]
    fn regions() {
        let e = Endpoint::for_region("cn-north-4").expect("known");
        assert_eq!(
            e.as_str(),
            "https://codearts-deploy.cn-north-4.myhuaweicloud.com"
        );
        let err = Endpoint::for_region("mars-1").expect_err("unknown");
        assert!(err.to_string().contains("cn-north-4"));
    }
}

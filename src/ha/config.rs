//! The `ha:` settings, validated: the database to meet the other nodes in (a `postgres://` URL
//! that never holds a password), this node's name, the lease and the catch-up window. Pure.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Shortest and longest lease (the contract: 5 s to 5 min).
pub const LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(300));
/// The lease when `ha.lease` is absent.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// The catch-up window when `ha.catch_up` is absent: a fire missed during a takeover is run if
/// it is at most this late.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(300);
/// Longest catch-up window.
pub const MAX_CATCH_UP: Duration = Duration::from_secs(86_400);
/// Longest node name.
pub const NODE_MAX: usize = 64;

/// How the connection to the database is protected, as libpq's `sslmode` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS, the server's certificate not verified (libpq's meaning).
    Require,
    /// TLS, the certificate chain verified against the roots, the host name not.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    /// `sslmode=` as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Disable,
            Self::Prefer,
            Self::Require,
            Self::VerifyCa,
            Self::VerifyFull,
        ]
        .into_iter()
        .find(|m| m.as_str() == text)
    }
}

/// Where the database is: a `postgres://user@host:port/dbname?sslmode=...` URL, parsed. Its
/// `Display` is the URL again, safe to log (it never holds a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (5432 when the URL has none).
    pub port: u16,
    /// Database name (the user name when the URL has none, as libpq does).
    pub dbname: String,
    /// User name (`deployd` when the URL has none).
    pub user: String,
    /// `sslmode` (`prefer` when absent, as libpq).
    pub sslmode: SslMode,
    /// `sslrootcert`: a PEM file of the roots to trust; the system's roots when absent.
    pub root_cert: Option<PathBuf>,
    /// `connect_timeout` in seconds (10 s when absent).
    pub connect_timeout: Duration,
}

impl Database {
    /// Parses a `postgres://` or `postgresql://` URL. A password in it is refused: a URL is
    /// logged and shown by `status`, so the password goes to `ha.password_file`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url =
            url::Url::parse(text.trim()).map_err(|e| format!("is not a postgres:// URL ({e})"))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(format!(
                "the scheme is {:?}; a postgres:// URL is needed",
                url.scheme()
            ));
        }
        if url.password().is_some() {
            return Err(
                "holds a password; put it in ha.password_file instead (the URL is shown in logs and by `deployd status`)"
                    .into(),
            );
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => decode(d)?,
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err("names no host (postgres://USER@HOST:PORT/DATABASE)".into()),
        };
        let user = match url.username() {
            "" => "deployd".to_string(),
            u => decode(u)?,
        };
        let dbname = match url.path().trim_start_matches('/') {
            "" => user.clone(),
            d if d.contains('/') => return Err(format!("the database name {d:?} holds a /")),
            d => decode(d)?,
        };
        let mut db = Self {
            host,
            port: url.port().unwrap_or(5432),
            dbname,
            user,
            sslmode: SslMode::Prefer,
            root_cert: None,
            connect_timeout: Duration::from_secs(10),
        };
        for (key, value) in url.query_pairs() {
            match &*key {
                "sslmode" => {
                    db.sslmode = SslMode::parse(&value).ok_or_else(|| {
                        format!(
                            "sslmode={value:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        )
                    })?;
                }
                "sslrootcert" if !value.is_empty() => db.root_cert = Some(PathBuf::from(&*value)),
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .ok()
                        .filter(|s| (1..=300).contains(s))
                        .ok_or_else(|| {
                            format!(
                                "connect_timeout={value:?} is not a number of seconds from 1 to 300"
                            )
                        })?;
                    db.connect_timeout = Duration::from_secs(secs);
                }
                other => {
                    return Err(format!(
                        "the parameter {other:?} is not supported (sslmode, sslrootcert and connect_timeout are)"
                    ));
                }
            }
        }
        if db.root_cert.is_some() && matches!(db.sslmode, SslMode::Disable) {
            return Err("sslrootcert is given but sslmode=disable turns TLS off".into());
        }
        Ok(db)
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "postgres://{}@{host}:{}/{}?sslmode={}",
            self.user,
            self.port,
            self.dbname,
            self.sslmode.as_str()
        )
    }
}

fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}

/// Validated `ha:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// The database.
    pub database: Database,
    /// File holding the database password (looked up in `$CREDENTIALS_DIRECTORY` first).
    pub password_file: Option<PathBuf>,
    /// This node's name, unique among the nodes.
    pub node: String,
    /// How long a silent leader keeps the lead.
    pub lease: Duration,
    /// How late a fire missed during a takeover may be and still run.
    pub catch_up: Duration,
}

/// The host's name (the kernel's, as `hostname` prints it), the default node name.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Checks a node name: 1 to [`NODE_MAX`] letters, digits, `.`, `-` or `_` (a host name fits).
pub fn check_node(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NODE_MAX {
        return Err(format!("must be 1 to {NODE_MAX} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "holds {c:?}; a node name is letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_as_libpq_reads_them() {
        let db = Database::parse("postgres://deployd@db.internal:5433/deploys?sslmode=verify-full")
            .expect("valid");
        assert_eq!(
            (
                db.host.as_str(),
                db.port,
                db.dbname.as_str(),
                db.user.as_str()
            ),
            ("db.internal", 5433, "deploys", "deployd")
        );
        assert_eq!(db.sslmode, SslMode::VerifyFull);
        assert_eq!(
            db.to_string(),
            "postgres://deployd@db.internal:5433/deploys?sslmode=verify-full"
        );
        let db = Database::parse("postgresql://[::1]/").expect("valid");
        assert_eq!((db.host.as_str(), db.port), ("::1", 5432));
        assert_eq!(
            (db.user.as_str(), db.dbname.as_str()),
            ("deployd", "deployd")
        );
        assert_eq!(db.sslmode, SslMode::Prefer);
        assert_eq!(
            db.to_string(),
            "postgres://deployd@[::1]:5432/deployd?sslmode=prefer"
        );
        let db = Database::parse(
            "postgres://ops%40corp@127.0.0.1/d?sslmode=verify-ca&sslrootcert=/etc/deployd/ca.pem&connect_timeout=3",
        )
        .expect("valid");
        assert_eq!(db.user, "ops@corp");
        assert_eq!(db.root_cert, Some(PathBuf::from("/etc/deployd/ca.pem")));
        assert_eq!(db.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn bad_urls_say_why_and_never_echo_a_password() {
        for (url, needle) in [
            ("postgres://u:hunter2@h/d", "password_file"),
            ("mysql://u@h/d", "scheme"),
            ("postgres:///d", "no host"),
            ("postgres://u@h/d?sslmode=verify", "sslmode"),
            ("postgres://u@h/d?options=-c", "not supported"),
            ("postgres://u@h/d?connect_timeout=0", "connect_timeout"),
            (
                "postgres://u@h/d?sslmode=disable&sslrootcert=/ca.pem",
                "sslmode=disable",
            ),
            ("not a url", "not a postgres:// URL"),
        ] {
            let e = Database::parse(url).expect_err(url);
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn node_names_are_host_names() {
        for ok in ["web-1", "db.internal", "a", "n_2"] {
            check_node(ok).expect(ok);
        }
        for bad in ["", "two words", "é", &"x".repeat(65)] {
            assert!(check_node(bad).is_err(), "{bad}");
        }
    }
}

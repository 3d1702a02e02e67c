//! Connecting to the cluster's PostgreSQL database: the password from its file, TLS by
//! `sslmode` with rustls (`verify-full` checks the chain and the host name, `verify-ca` the
//! chain only, `require`/`prefer` encrypt without verifying, as libpq does), and errors that
//! say whether the configuration is wrong (exit 78) or the database is just not there yet.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::config::{Database, SslMode};
use crate::secret::Secret;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The settings are wrong: a password refused, a database that does not exist, roots that
    /// cannot be read. Retrying will not help (exit 78).
    #[error("{database}: {why}")]
    Config {
        /// The database, as a URL without password.
        database: String,
        /// What is wrong.
        why: String,
    },
    /// The database is not reachable now (down, network, TLS handshake): worth retrying.
    #[error("{database}: {why}")]
    Unavailable {
        /// The database, as a URL without password.
        database: String,
        /// What failed.
        why: String,
    },
}

impl ConnectError {
    /// Whether retrying cannot help.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config { .. })
    }
}

/// Opens one connection, and spawns the task that drives it. `application_name` shows the
/// node in `pg_stat_activity`.
pub async fn connect(
    db: &Database,
    password: Option<&Secret>,
    application_name: &str,
) -> Result<Client, ConnectError> {
    let config_error = |why: String| ConnectError::Config {
        database: db.to_string(),
        why,
    };
    let mut config = tokio_postgres::Config::new();
    config
        .host(&db.host)
        .port(db.port)
        .user(&db.user)
        .dbname(&db.dbname)
        .application_name(application_name)
        .connect_timeout(db.connect_timeout)
        // A connection a cut cable left open is found within a lease, not hours later.
        .keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(5))
        .ssl_mode(match db.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = password {
        config.password(p.expose());
    }
    let tls = tls_config(db).map_err(config_error)?;
    let result = match tls {
        None => config
            .connect(tokio_postgres::NoTls)
            .await
            .map(|(client, conn)| {
                spawn_connection(conn);
                client
            }),
        Some(tls) => config
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            .await
            .map(|(client, conn)| {
                spawn_connection(conn);
                client
            }),
    };
    result.map_err(|e| classify(db, &e))
}

fn spawn_connection<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("database connection closed: {e}");
        }
    });
}

/// A refused password, an unknown database or role: configuration; the rest: unavailable.
fn classify(db: &Database, e: &tokio_postgres::Error) -> ConnectError {
    let why = describe(e);
    let config = e.code().is_some_and(|c| {
        [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
        ]
        .contains(c)
    });
    if config {
        ConnectError::Config {
            database: db.to_string(),
            why,
        }
    } else {
        ConnectError::Unavailable {
            database: db.to_string(),
            why,
        }
    }
}

/// A database error with its cause (tokio-postgres' `Display` alone says "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// The rustls configuration `sslmode` asks for; `None` for `disable`.
fn tls_config(db: &Database) -> Result<Option<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let config = match db.sslmode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(db)?);
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| format!("TLS set-up: {e}"))?;
            if db.sslmode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(Some(config))
}

/// `sslrootcert`'s certificates, or the system's roots.
fn roots(db: &Database) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match &db.root_cert {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {}: no certificate in it",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "no trusted roots on this host for sslmode=verify-*: install ca-certificates or give sslrootcert"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

/// `require`/`prefer`: the handshake's signatures are checked (so the session keys are the
/// server's), its certificate is not: libpq's meaning of these modes.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate may differ
/// from the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

//! `silo dev --tls`: every hop over TLS on loopback, with a throwaway CA made on the first
//! such run and kept under `<data dir>/tls/`: `ca.pem` (for grpcurl, siloctl, clients) and
//! one certificate for `localhost` and `127.0.0.1` that the PostgreSQL server and both gRPC
//! servers present. The CA's private key is dropped once the certificate is signed: nothing
//! else can ever be issued under it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use silo_pg_server::PgServer;

/// The names the dev certificate is valid for.
const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// The certificate and key's names inside the PostgreSQL data directory.
const PG_CERT: &str = "silo-dev-server.crt";
const PG_KEY: &str = "silo-dev-server.key";

/// The dev CA and the certificate it signed, as files.
pub struct DevTls {
    /// The CA certificate, PEM: what clients trust.
    pub ca: PathBuf,
    /// The servers' certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM (mode 0600).
    pub key: PathBuf,
}

impl DevTls {
    /// The files under `dir`, made when any of them is missing.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let tls = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        if [&tls.ca, &tls.cert, &tls.key].iter().all(|p| p.exists()) {
            return Ok(tls);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "silo dev CA (throwaway)");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params = CertificateParams::new(NAMES.map(str::to_owned).to_vec())?;
        params.distinguished_name.push(DnType::CommonName, NAMES[0]);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(&tls.ca, &ca_cert.pem(), 0o644)?;
        write(&tls.cert, &cert.pem(), 0o644)?;
        write(&tls.key, &key.serialize_pem(), 0o600)?;
        Ok(tls)
    }

    /// `dsn` with `sslmode=verify-full` against the dev CA.
    pub fn verified(&self, dsn: &str) -> String {
        let separator = if dsn.contains('?') { '&' } else { '?' };
        format!(
            "{dsn}{separator}sslmode=verify-full&sslrootcert={}",
            self.ca.display()
        )
    }
}

fn write(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}

/// Turns the server's TLS on with the dev certificate (`tls`), or off (`None`), through
/// `ALTER SYSTEM` and a configuration reload, so a data directory made by either kind of
/// run serves the other; waits until new sessions see it.
pub async fn configure_postgres(server: &PgServer, tls: Option<&DevTls>) -> anyhow::Result<()> {
    let admin = server.connect("postgres").await?;
    let want = match tls {
        Some(tls) => {
            // Inside the data directory: the server's user can read it there even when the
            // dev data dir is out of its reach, and PostgreSQL wants to own its key.
            let data = server.data_dir();
            for (from, name, mode) in [(&tls.cert, PG_CERT, 0o644), (&tls.key, PG_KEY, 0o600)] {
                let to = data.join(name);
                let contents = std::fs::read_to_string(from)
                    .with_context(|| format!("reading {}", from.display()))?;
                write(&to, &contents, mode)?;
                silo_pg_server::give_to_server_user(&to)?;
            }
            // One statement each: ALTER SYSTEM refuses to run in a transaction block.
            for statement in [
                format!("ALTER SYSTEM SET ssl_cert_file = '{PG_CERT}'"),
                format!("ALTER SYSTEM SET ssl_key_file = '{PG_KEY}'"),
                "ALTER SYSTEM SET ssl = on".to_owned(),
            ] {
                admin.batch_execute(&statement).await?;
            }
            "on"
        }
        None => {
            for statement in [
                "ALTER SYSTEM RESET ssl",
                "ALTER SYSTEM RESET ssl_cert_file",
                "ALTER SYSTEM RESET ssl_key_file",
            ] {
                admin.batch_execute(statement).await?;
            }
            "off"
        }
    };
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    drop(admin);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ssl: String = server
            .connect("postgres")
            .await?
            .query_one("SHOW ssl", &[])
            .await?
            .get(0);
        if ssl == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the local PostgreSQL server did not turn ssl {want} (see its server.log in {})",
            server.data_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

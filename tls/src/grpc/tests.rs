//! The server side over real loopback connections: an echo server behind [`Incoming`],
//! clients made with tokio-rustls.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

use super::*;
use crate::testing::{Issued, TestCa};

/// Serves `incoming` until the test ends: every connection echoes what it reads.
async fn echo_server(tls: Option<Arc<ServerTls>>, timeout: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut incoming = Incoming::new(listener, tls).with_handshake_timeout(timeout);
    tokio::spawn(async move {
        while let Some(io) = incoming.next().await {
            let Ok(mut io) = io else { continue };
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = io.read(&mut buf).await {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn client_config(ca: &TestCa, identity: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(cert) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `address` trusting `ca`, proven by one echoed byte (a server that
/// refuses the client's certificate says so only after the client's handshake is done).
async fn connect(
    address: SocketAddr,
    ca: &TestCa,
    identity: Option<&Issued>,
) -> std::io::Result<ClientStream> {
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, identity));
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await?;
    echo(&mut stream).await?;
    let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "ALPN h2 negotiated");
    Ok(stream)
}

async fn echo(stream: &mut ClientStream) -> std::io::Result<()> {
    stream.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    assert_eq!(&byte, b"x");
    Ok(())
}

struct Files {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            dir: dir.path().to_owned(),
            _dir: dir,
        }
    }

    fn server(&self, cert: &Issued, client_ca: Option<&TestCa>) -> ServerTlsFiles {
        let (cert, key) = cert.write(&self.dir, "server");
        ServerTlsFiles {
            cert,
            key,
            client_ca: client_ca.map(|ca| ca.write(&self.dir.join("client-ca.crt"))),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn load(files: ServerTlsFiles) -> Arc<ServerTls> {
    Arc::new(
        ServerTls::load(files)
            .unwrap()
            .with_check_interval(Duration::ZERO),
    )
}

#[tokio::test]
async fn without_tls_the_tcp_streams_pass_through() {
    let address = echo_server(None, DEFAULT_HANDSHAKE_TIMEOUT).await;
    let mut tcp = TcpStream::connect(address).await.unwrap();
    tcp.write_all(b"plain").await.unwrap();
    let mut buf = [0u8; 5];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"plain");
}

#[tokio::test]
async fn a_silent_client_neither_blocks_others_nor_stays_forever() {
    let ca = TestCa::new("ca");
    let files = Files::new();
    let tls = load(files.server(&ca.issue(&["localhost"]), None));
    let address = echo_server(Some(tls), Duration::from_millis(300)).await;
    // Connects and never says a word: its handshake waits, nobody else does.
    let mut silent = TcpStream::connect(address).await.unwrap();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), connect(address, &ca, None))
            .await
            .expect("a handshake is not held up by a silent client")
            .unwrap();
    }
    // After the handshake timeout the server closes the silent connection.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed after the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_client_ca_makes_client_certificates_required_and_verified() {
    let ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let stranger_ca = TestCa::new("stranger ca");
    let files = Files::new();
    let tls = load(files.server(&ca.issue(&["localhost"]), Some(&client_ca)));
    assert!(tls.requires_client_certificates());
    let address = echo_server(Some(tls), DEFAULT_HANDSHAKE_TIMEOUT).await;

    let client = client_ca.issue(&["router"]);
    connect(address, &ca, Some(&client)).await.unwrap();
    assert!(
        connect(address, &ca, None).await.is_err(),
        "no client certificate"
    );
    let stranger = stranger_ca.issue(&["router"]);
    assert!(
        connect(address, &ca, Some(&stranger)).await.is_err(),
        "a client certificate from another CA"
    );
}

#[tokio::test]
async fn a_client_trusting_another_ca_refuses_the_server() {
    let ca = TestCa::new("ca");
    let files = Files::new();
    let tls = load(files.server(&ca.issue(&["localhost"]), None));
    let address = echo_server(Some(tls), DEFAULT_HANDSHAKE_TIMEOUT).await;
    assert!(connect(address, &TestCa::new("other"), None).await.is_err());
}

/// Replaces `link` (a symbolic link) atomically with one to `target`, as Kubernetes
/// updates a Secret volume.
fn swap_link(dir: &Path, link: &str, target: &str) {
    let temporary = dir.join(format!("{link}.tmp"));
    std::os::unix::fs::symlink(target, &temporary).unwrap();
    std::fs::rename(&temporary, dir.join(link)).unwrap();
}

#[tokio::test]
async fn a_rotated_secret_volume_serves_the_new_certificate_to_new_connections() {
    // The layout of a Kubernetes Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..v1.
    let files = Files::new();
    let old_ca = TestCa::new("old ca");
    let new_ca = TestCa::new("new ca");
    for (version, ca) in [("..v1", &old_ca), ("..v2", &new_ca)] {
        std::fs::create_dir(files.path(version)).unwrap();
        let cert = ca.issue(&["localhost"]);
        std::fs::write(files.path(version).join("tls.crt"), &cert.cert_pem).unwrap();
        std::fs::write(files.path(version).join("tls.key"), &cert.key_pem).unwrap();
    }
    swap_link(&files.dir, "..data", "..v1");
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), files.path(name)).unwrap();
    }
    let tls = load(ServerTlsFiles {
        cert: files.path("tls.crt"),
        key: files.path("tls.key"),
        client_ca: None,
    });
    let address = echo_server(Some(tls), DEFAULT_HANDSHAKE_TIMEOUT).await;
    let mut before = connect(address, &old_ca, None).await.unwrap();
    assert!(connect(address, &new_ca, None).await.is_err());

    swap_link(&files.dir, "..data", "..v2");
    connect(address, &new_ca, None).await.unwrap();
    assert!(connect(address, &old_ca, None).await.is_err());
    echo(&mut before)
        .await
        .expect("a connection made before the rotation keeps working");
}

#[tokio::test]
async fn broken_new_files_keep_the_certificate_in_use() {
    let old_ca = TestCa::new("old ca");
    let new_ca = TestCa::new("new ca");
    let files = Files::new();
    let server = files.server(&old_ca.issue(&["localhost"]), None);
    let tls = load(server.clone());
    let address = echo_server(Some(tls), DEFAULT_HANDSHAKE_TIMEOUT).await;

    std::fs::write(&server.cert, "not a certificate").unwrap();
    connect(address, &old_ca, None).await.unwrap();
    // Half of a rotation: the new certificate, the old key.
    let new = new_ca.issue(&["localhost"]);
    std::fs::write(&server.cert, &new.cert_pem).unwrap();
    connect(address, &old_ca, None).await.unwrap();
    std::fs::remove_file(&server.key).unwrap();
    connect(address, &old_ca, None).await.unwrap();
    // The other half: now the pair fits and is used.
    std::fs::write(&server.key, &new.key_pem).unwrap();
    connect(address, &new_ca, None).await.unwrap();
}

#[test]
fn bad_files_fail_at_load_naming_the_file() {
    let ca = TestCa::new("ca");
    let files = Files::new();
    let server = files.server(&ca.issue(&["localhost"]), None);
    let missing = ServerTlsFiles {
        cert: files.path("nope.crt"),
        ..server.clone()
    };
    let error = ServerTls::load(missing).unwrap_err();
    assert!(matches!(error, GrpcTlsError::Read { .. }), "{error}");
    assert!(error.to_string().contains("nope.crt"), "{error}");

    std::fs::write(files.path("empty.crt"), "").unwrap();
    let error = ServerTls::load(ServerTlsFiles {
        cert: files.path("empty.crt"),
        ..server.clone()
    })
    .unwrap_err();
    assert!(
        matches!(error, GrpcTlsError::NoCertificate { .. }),
        "{error}"
    );

    let (_, other_key) = ca.issue(&["localhost"]).write(&files.dir, "other");
    let error = ServerTls::load(ServerTlsFiles {
        key: other_key,
        ..server.clone()
    })
    .unwrap_err();
    assert!(matches!(error, GrpcTlsError::Rustls { .. }), "{error}");

    let error = ServerTls::load(ServerTlsFiles {
        client_ca: Some(files.path("empty.crt")),
        ..server
    })
    .unwrap_err();
    assert!(
        matches!(error, GrpcTlsError::NoCertificate { .. }),
        "{error}"
    );
}

#[test]
fn server_flags_go_together() {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        tls: ServerTlsArgs,
    }
    let parse = |args: &[&str]| {
        Flags::try_parse_from(std::iter::once("server").chain(args.iter().copied()))
            .map(|flags| flags.tls)
    };
    assert_eq!(parse(&[]).unwrap().files().unwrap(), None);
    let both = parse(&["--tls-cert-file=c", "--tls-key-file=k"]).unwrap();
    assert_eq!(
        both.files().unwrap(),
        Some(ServerTlsFiles {
            cert: "c".into(),
            key: "k".into(),
            client_ca: None
        })
    );
    for alone in [
        &["--tls-cert-file=c"][..],
        &["--tls-key-file=k"],
        &["--tls-client-ca-file=ca"],
    ] {
        let error = parse(alone).expect_err("refused");
        assert!(error.to_string().contains("--tls-"), "{error}");
    }
    // The same check without clap's help, for callers that fill the struct themselves.
    let alone = ServerTlsArgs {
        tls_cert_file: Some("c".into()),
        ..ServerTlsArgs::default()
    };
    assert!(matches!(alone.files(), Err(GrpcTlsError::Incomplete(_))));
}

#[test]
fn client_tls_checks_its_files_up_front() {
    let ca = TestCa::new("ca");
    let files = Files::new();
    let ca_file = ca.write(&files.dir.join("ca.crt"));
    let (cert, key) = ca.issue(&["router"]).write(&files.dir, "client");
    let (_, other_key) = ca.issue(&["router"]).write(&files.dir, "other");
    let tls = |ca_file: &Path, cert: Option<&Path>, key: Option<&Path>| ClientTls {
        ca_file: Some(ca_file.to_owned()),
        cert_file: cert.map(Path::to_owned),
        key_file: key.map(Path::to_owned),
    };
    tls(&ca_file, None, None).config().unwrap();
    tls(&ca_file, Some(&cert), Some(&key)).config().unwrap();
    for (bad, expected) in [
        (tls(&files.path("nope"), None, None), "nope"),
        (tls(&key, None, None), "no PEM certificate"),
        (tls(&ca_file, Some(&cert), None), "needs its key"),
        (tls(&ca_file, None, Some(&key)), "needs its certificate"),
        (
            tls(&ca_file, Some(&cert), Some(&other_key)),
            "client certificate",
        ),
    ] {
        let error = bad.config().unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
}

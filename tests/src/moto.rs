//! moto's AWS server on a free loopback port: a real AWS-protocol peer for the `rds`
//! provisioner. `scripts/test.sh` installs moto into `.venv`; `SILO_MOTO_PYTHON` names
//! another Python that has it. The server runs inside a small Python watchdog that exits
//! when its stdin closes, so it never outlives the test process.

use std::{net::TcpListener as StdListener, path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const SCRIPT: &str = r#"
import sys, logging
logging.disable(logging.CRITICAL)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"#;

fn python() -> PathBuf {
    if let Ok(path) = std::env::var("SILO_MOTO_PYTHON") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

pub struct Moto {
    port: u16,
    _child: Child,
}

impl Moto {
    /// Starts a moto server; panics with a hint when moto is not installed.
    pub async fn start() -> Self {
        let python = python();
        assert!(
            python.exists(),
            "moto is not installed: run scripts/test.sh (it creates .venv with moto[server]) \
             or set SILO_MOTO_PYTHON to a Python that has moto[server] ({} is missing)",
            python.display()
        );
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(&python)
            .args(["-c", SCRIPT, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto starts");
        let stdout = child.stdout.take().expect("moto stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("moto ready in time")
            .expect("moto output");
        assert_eq!(ready.as_deref(), Some("ready"), "moto did not start");
        let moto = Self {
            port,
            _child: child,
        };
        moto.reset().await;
        moto
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Clears every resource (`POST /moto-api/reset`).
    pub async fn reset(&self) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("moto reachable");
        stream
            .write_all(
                b"POST /moto-api/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("reset sent");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("reset answered");
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "moto reset: {answer}"
        );
    }
}

//! [`LinkProxy`]: a TCP proxy on loopback between a router and its control plane, to make
//! the link misbehave the ways real networks do: connections that go silent (a dead peer,
//! a dropped NAT entry: no FIN, no RST) and a peer that accepts connections but never
//! answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does with new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the target.
    Forward,
    /// Accept, then never send or read a byte (a peer that hangs).
    Hang,
}

struct State {
    target: SocketAddr,
    mode: Mode,
    /// Cancelled to freeze every connection made so far.
    epoch: CancellationToken,
}

pub struct LinkProxy {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl LinkProxy {
    /// A proxy on 127.0.0.1 forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State {
            target,
            mode: Mode::Forward,
            epoch: CancellationToken::new(),
        }));
        let shutdown = CancellationToken::new();
        tokio::spawn(accept(listener, state.clone(), shutdown.clone()));
        Self {
            address,
            state,
            shutdown,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What new connections get from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("lock").mode = mode;
    }

    /// New connections go to `target` (a control plane restarted on another port).
    pub fn retarget(&self, target: SocketAddr) {
        self.state.lock().expect("lock").target = target;
    }

    /// Every connection made so far goes silent: nothing more is passed either way, and
    /// nothing is closed, until the proxy is dropped.
    pub fn freeze_existing(&self) {
        let mut state = self.state.lock().expect("lock");
        state.epoch.cancel();
        state.epoch = CancellationToken::new();
    }
}

async fn accept(listener: TcpListener, state: Arc<Mutex<State>>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let (target, mode, frozen) = {
            let state = state.lock().expect("lock");
            (state.target, state.mode, state.epoch.clone())
        };
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if mode == Mode::Hang {
                // Held open, never answered, until the proxy goes.
                shutdown.cancelled().await;
                drop(client);
                return;
            }
            let Ok(upstream) = TcpStream::connect(target).await else {
                // Refused upstream: refuse here too.
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (mut client_read, mut client_write) = client.into_split();
            let (mut upstream_read, mut upstream_write) = upstream.into_split();
            let frozen = tokio::select! {
                () = pump(&mut client_read, &mut upstream_write) => false,
                () = pump(&mut upstream_read, &mut client_write) => false,
                () = frozen.cancelled() => true,
                () = shutdown.cancelled() => false,
            };
            if frozen {
                // Silent from now on: the sockets stay open, nothing passes.
                shutdown.cancelled().await;
            }
        });
    }
}

async fn pump(from: &mut tokio::net::tcp::OwnedReadHalf, to: &mut tokio::net::tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

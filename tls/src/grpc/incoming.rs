//! [`Incoming`]: the connections a gRPC server serves, TLS or plain.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use super::ServerTls;

/// Longest a TLS handshake may take by default before the connection is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; beyond it no new connection is accepted (the kernel's
/// backlog holds them) until some finish.
const MAX_HANDSHAKES: usize = 1024;

/// The stream of connections for tonic's `serve_with_incoming_shutdown`.
///
/// Accepts TCP on the listener with `TCP_NODELAY` (without it a response can sit in the
/// kernel until the peer's delayed ACK) and TCP keepalive after 60 s. With TLS, each
/// connection's handshake runs in its own task, so a slow or silent client holds up
/// nobody else; a handshake that fails or takes longer than the timeout (10 s by
/// default) closes that connection and is logged at debug level. Without TLS the TCP
/// streams are yielded as they are accepted.
///
/// Dropping the stream (tonic does when it stops accepting) closes the listener and ends
/// the handshakes still running.
pub struct Incoming {
    tcp: TcpIncoming,
    tls: Option<Arc<ServerTls>>,
    handshake_timeout: Duration,
    handshakes: JoinSet<Option<ServerIo>>,
    listener_done: bool,
}

impl Incoming {
    /// The connections of `listener`, TLS-wrapped with `tls`'s current configuration when
    /// it is set.
    pub fn new(listener: TcpListener, tls: Option<Arc<ServerTls>>) -> Self {
        let tcp = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        Self {
            tcp,
            tls,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            handshakes: JoinSet::new(),
            listener_done: false,
        }
    }

    /// The same, giving up on a TLS handshake after `timeout`.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

impl From<TcpListener> for Incoming {
    /// The plain TCP connections of the listener (TLS off).
    fn from(listener: TcpListener) -> Self {
        Self::new(listener, None)
    }
}

impl Stream for Incoming {
    type Item = Result<ServerIo, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.listener_done && this.handshakes.len() < MAX_HANDSHAKES {
            match Pin::new(&mut this.tcp).poll_next(cx) {
                Poll::Ready(Some(Ok(stream))) => match &this.tls {
                    None => return Poll::Ready(Some(Ok(ServerIo::Plain(stream)))),
                    Some(tls) => {
                        this.handshakes.spawn(handshake(
                            tls.clone(),
                            stream,
                            this.handshake_timeout,
                        ));
                    }
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => this.listener_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(io)))) => return Poll::Ready(Some(Ok(io))),
                // A failed handshake was logged by its task; a panicked one is dropped.
                Poll::Ready(Some(Ok(None) | Err(_))) => {}
                Poll::Ready(None) if this.listener_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn handshake(tls: Arc<ServerTls>, stream: TcpStream, timeout: Duration) -> Option<ServerIo> {
    let peer = stream.peer_addr().ok();
    let acceptor = TlsAcceptor::from(tls.config());
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(ServerIo::Tls(Box::new(stream))),
        Ok(Err(error)) => {
            tracing::debug!(peer = ?peer, error = %error, "tls handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = ?peer, timeout_ms = timeout.as_millis(), "tls handshake timed out");
            None
        }
    }
}

/// One accepted connection: plain TCP, or TLS over TCP after a finished handshake.
#[derive(Debug)]
pub enum ServerIo {
    /// TLS is off.
    Plain(TcpStream),
    /// TLS is on; the handshake is done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ServerIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl Connected for ServerIo {
    /// The peer's and the local address, whether TLS is on or not.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

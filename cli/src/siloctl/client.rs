//! The control-plane connection and the token every call carries.

use anyhow::Context as _;
use silo_proto::controlplane::v1::control_plane_client::ControlPlaneClient;
use silo_tls::grpc::ClientTls;
use tonic::{Request, transport::Channel};

pub struct Connection {
    client: ControlPlaneClient<Channel>,
    token: Option<String>,
}

/// A connected channel to `endpoint` (`what` names it in errors): over TLS with `tls`'s
/// files for an `https://` endpoint; naming TLS files for an `http://` endpoint is an
/// error rather than a silently plaintext call.
pub async fn channel(endpoint: &str, tls: &ClientTls, what: &str) -> anyhow::Result<Channel> {
    let mut channel = Channel::from_shared(endpoint.to_owned())
        .with_context(|| format!("invalid {what} endpoint {endpoint}"))?;
    if endpoint.starts_with("https://") {
        let config = tls.config().context("TLS")?;
        channel = channel.tls_config(config).context("TLS")?;
    } else if tls != &ClientTls::default() {
        anyhow::bail!("--ca-file, --cert-file and --key-file need an https:// {what} endpoint");
    }
    channel
        .connect()
        .await
        .with_context(|| format!("cannot reach the {what} at {endpoint}"))
}

impl Connection {
    pub async fn new(
        endpoint: &str,
        token: Option<String>,
        tls: &ClientTls,
    ) -> anyhow::Result<Self> {
        let channel = channel(endpoint, tls, "control plane").await?;
        Ok(Self {
            client: ControlPlaneClient::new(channel),
            token,
        })
    }

    pub fn client(&self) -> ControlPlaneClient<Channel> {
        self.client.clone()
    }

    /// A request with `authorization: Bearer <token>` when a token is set.
    pub fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .context("the token is not a valid header value")?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

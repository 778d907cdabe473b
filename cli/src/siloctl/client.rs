//! The control-plane connection and the token every call carries.

use anyhow::Context as _;
use silo_proto::controlplane::v1::control_plane_client::ControlPlaneClient;
use tonic::{Request, transport::Channel};

pub struct Connection {
    client: ControlPlaneClient<Channel>,
    token: Option<String>,
}

impl Connection {
    pub async fn new(endpoint: &str, token: Option<String>) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(endpoint.to_owned())
            .with_context(|| format!("invalid endpoint {endpoint}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach the control plane at {endpoint}"))?;
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

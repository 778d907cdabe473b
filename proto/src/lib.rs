//! silo's gRPC API, generated from the `.proto` files under `proto/silo`.

/// The encoded file descriptor set of every silo service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/silo_descriptor.bin"));

pub mod controlplane {
    pub mod v1 {
        tonic::include_proto!("silo.controlplane.v1");
    }
}

pub mod router {
    pub mod v1 {
        tonic::include_proto!("silo.router.v1");
    }
}

/// Whether `raw` is a tenant id: 2 to 63 bytes, a lower-case ASCII letter, then lower-case
/// letters, digits and `-`. The one rule of both services: the control plane creates
/// tenants by it, and the router refuses a token naming anything else before it asks the
/// control plane.
pub fn is_valid_tenant_id(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    (2..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

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

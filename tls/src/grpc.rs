//! gRPC server and client TLS.

"""An independent gRPC-over-TLS client for the TLS tests (tests/tests/e2e/grpc_tls.rs).

Connects with grpcio (BoringSSL) to a silo server over TLS, trusting only the given CA and
presenting a client certificate when one is given, then checks grpc.health.v1 and makes
one real call: Router/Query as a tenant, or ControlPlane/GetTenant as an admin. With
--expect-refused it checks the opposite: the connection is refused (no certificate, a
certificate the server does not trust, a server the client does not trust). Exits non-zero
with the reason on the first failed check.

usage: tls_client.py PROTO_DIR TARGET --ca FILE [--cert FILE --key FILE]
           (--router TENANT TOKEN | --control-plane TENANT TOKEN | --expect-refused)
"""

import argparse
import sys
import tempfile

import grpc

from stubs import load_stubs

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def health_request(service):
    # grpc.health.v1.HealthCheckRequest { string service = 1; }, encoded by hand so no
    # health stubs are needed.
    name = service.encode()
    return b"\x0a" + bytes([len(name)]) + name if name else b""


def serving(response):
    # HealthCheckResponse { ServingStatus status = 1; }: SERVING is 1.
    return response == b"\x08\x01"


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")
    print(f"ok: {message}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("proto_dir")
    parser.add_argument("target")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--router", nargs=2, metavar=("TENANT", "TOKEN"))
    what.add_argument("--control-plane", nargs=2, metavar=("TENANT", "TOKEN"))
    what.add_argument("--expect-refused", action="store_true")
    args = parser.parse_args()

    def read(path):
        with open(path, "rb") as file:
            return file.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key) if args.key else None,
        certificate_chain=read(args.cert) if args.cert else None,
    )
    channel = grpc.secure_channel(args.target, credentials)
    health = channel.unary_unary(HEALTH_CHECK)

    if args.expect_refused:
        try:
            response = health(health_request(""), timeout=5)
        except grpc.RpcError as error:
            check(
                error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED),
                f"the connection is refused ({error.code().name}: {error.details()})",
            )
            return
        sys.exit(f"FAILED: the health check succeeded over a connection that must be refused: {response!r}")

    grpc.channel_ready_future(channel).result(timeout=10)
    if args.router:
        tenant, token = args.router
        service = "silo.router.v1.Router"
    else:
        tenant, token = args.control_plane
        service = "silo.controlplane.v1.ControlPlane"
    check(serving(health(health_request(service), timeout=10)), f"{service} is SERVING over TLS")

    with tempfile.TemporaryDirectory(prefix="silo-stubs-") as stubs:
        if args.router:
            pb, pb_grpc = load_stubs(args.proto_dir, stubs, "silo/router/v1/router.proto")
        else:
            pb, pb_grpc = load_stubs(args.proto_dir, stubs, "silo/controlplane/v1/controlplane.proto")
    metadata = [("authorization", f"Bearer {token}")]
    if args.router:
        request = pb.QueryRequest(statement=pb.Statement(sql="SELECT current_database() AS db"))
        response = pb_grpc.RouterStub(channel).Query(request, metadata=metadata, timeout=10)
        check(len(response.rows) == 1, f"{tenant} queries its database over TLS")
    else:
        request = pb.GetTenantRequest(tenant_id=tenant)
        response = pb_grpc.ControlPlaneStub(channel).GetTenant(request, metadata=metadata, timeout=10)
        check(response.tenant_id == tenant, f"GetTenant {tenant} over TLS")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()

"""An independent client for the `silo dev` acceptance test (cli/tests/silo_dev.rs).

Generates grpcio stubs from the repository's proto/ with grpcio-tools, then talks to the
router of a running `silo dev` as two tenants: creates a table and rows in each silo,
checks neither sees the other's rows, checks a token for one tenant cannot reach the
other, and scrapes the router's /metrics for per-tenant series. Exits non-zero with the
reason on the first failed check.

usage: silo_dev_client.py PROTO_DIR ROUTER_ADDR METRICS_URL TENANT=TOKEN TENANT=TOKEN
"""

import os
import re
import sys
import tempfile
import urllib.request

import grpc

from stubs import load_stubs


class Tenant:
    def __init__(self, stub, pb, name, token):
        self.stub, self.pb, self.name, self.token = stub, pb, name, token

    def metadata(self, tenant_header=None):
        metadata = [("authorization", f"Bearer {self.token}")]
        if tenant_header is not None:
            metadata.append(("x-tenant-id", tenant_header))
        return metadata

    def statement(self, sql, *params):
        values = []
        for param in params:
            if isinstance(param, int):
                values.append(self.pb.Value(int64_value=param))
            else:
                values.append(self.pb.Value(string_value=param))
        return self.pb.Statement(sql=sql, params=values)

    def execute(self, sql, *params, tenant_header=None):
        request = self.pb.ExecuteRequest(statement=self.statement(sql, *params))
        response = self.stub.Execute(request, metadata=self.metadata(tenant_header), timeout=10)
        return response.rows_affected

    def query(self, sql, *params, tenant_header=None):
        request = self.pb.QueryRequest(statement=self.statement(sql, *params))
        response = self.stub.Query(request, metadata=self.metadata(tenant_header), timeout=10)
        columns = [column.name for column in response.columns]
        rows = []
        for row in response.rows:
            rows.append({
                name: getattr(value, value.WhichOneof("kind"))
                for name, value in zip(columns, row.values)
            })
        return rows


def check(condition, message):
    if not condition:
        sys.exit(f"FAILED: {message}")
    print(f"ok: {message}", flush=True)


def expect_code(call, code, message):
    try:
        result = call()
    except grpc.RpcError as error:
        check(error.code() == code, f"{message} (got {error.code().name}: {error.details()})")
        return
    sys.exit(f"FAILED: {message}: the call succeeded and returned {result!r}")


def main():
    proto_dir, router, metrics_url, *tenant_args = sys.argv[1:]
    # The generated modules are imported before the directory goes away.
    with tempfile.TemporaryDirectory(prefix="silo-stubs-") as stubs:
        pb, pb_grpc = load_stubs(proto_dir, stubs, "silo/router/v1/router.proto")
    # SILO_CA_FILE: `silo dev --tls`'s CA; the router's certificate must chain to it
    # and name the address dialled.
    ca_file = os.environ.get("SILO_CA_FILE")
    if ca_file:
        with open(ca_file, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(router, credentials)
    else:
        channel = grpc.insecure_channel(router)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = pb_grpc.RouterStub(channel)
    tenants = []
    for arg in tenant_args:
        name, token = arg.split("=", 1)
        tenants.append(Tenant(stub, pb, name, token))
    acme, globex = tenants

    for tenant in tenants:
        tenant.execute("CREATE TABLE notes (id int8 PRIMARY KEY, owner text NOT NULL, body text)")
        for i in (1, 2):
            affected = tenant.execute(
                "INSERT INTO notes (id, owner, body) VALUES ($1, $2, $3)",
                i, tenant.name, f"{tenant.name} secret {i}",
            )
            check(affected == 1, f"{tenant.name}: row {i} inserted")

    for tenant, other in ((acme, globex), (globex, acme)):
        rows = tenant.query("SELECT id, owner, body FROM notes ORDER BY id")
        owners = {row["owner"] for row in rows}
        check(len(rows) == 2 and owners == {tenant.name},
              f"{tenant.name} sees exactly its own 2 rows, none of {other.name}'s: {rows}")
        database = tenant.query("SELECT current_database() AS db")[0]["db"]
        check(other.name not in database, f"{tenant.name} runs in its own database {database}")
        expect_code(
            lambda: tenant.query("SELECT * FROM notes WHERE owner = $1", other.name,
                                 tenant_header=other.name),
            grpc.StatusCode.PERMISSION_DENIED,
            f"{tenant.name}'s token with x-tenant-id {other.name} is refused",
        )
        expect_code(
            lambda: tenant.execute("DELETE FROM notes", tenant_header=other.name),
            grpc.StatusCode.PERMISSION_DENIED,
            f"{tenant.name}'s token cannot write to {other.name}",
        )
        expect_code(
            lambda: tenant.query("SELECT 1 AS one", tenant_header="no-such-tenant"),
            grpc.StatusCode.PERMISSION_DENIED,
            f"{tenant.name}'s token with an unknown tenant gets the same answer",
        )

    # After all those attempts, each silo still holds exactly its own rows.
    for tenant in tenants:
        rows = tenant.query("SELECT owner FROM notes")
        check([row["owner"] for row in rows] == [tenant.name] * 2,
              f"{tenant.name}'s rows are untouched")

    expect_code(
        lambda: stub.Query(pb.QueryRequest(statement=pb.Statement(sql="SELECT 1")), timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
        "a call without a token is refused",
    )

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        metrics = response.read().decode()
    for tenant in tenants:
        pattern = re.compile(
            r'^silo_router_\w*calls_total\{[^}]*tenant_id="' + re.escape(tenant.name) + r'"[^}]*\} (\d+)',
            re.MULTILINE,
        )
        counts = [int(count) for count in pattern.findall(metrics)]
        check(sum(counts) > 0, f"/metrics has call series for {tenant.name}: {sum(counts)} calls")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()

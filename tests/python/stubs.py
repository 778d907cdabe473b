"""Python stubs for silo's gRPC services, generated from proto/ at run time (grpcio-tools),
for the test clients beside this file."""

import importlib
import sys

from grpc_tools import protoc


def load_stubs(proto_dir, out_dir, proto):
    import grpc_tools

    well_known = grpc_tools.__path__[0] + "/_proto"
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        proto,
    ])
    if code != 0:
        sys.exit(f"protoc failed ({code}) on {proto_dir}/{proto}")
    sys.path.insert(0, out_dir)
    module = proto[:-len(".proto")].replace("/", ".")
    return importlib.import_module(module + "_pb2"), importlib.import_module(module + "_pb2_grpc")

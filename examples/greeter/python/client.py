"""Calls the greeter through a Micro node's gRPC port, as any language's generated client can.

    pip install grpcio grpcio-tools
    python -m grpc_tools.protoc -I ../proto --python_out=. --grpc_python_out=. ../proto/greeter.proto
    python client.py John            # MICRO_SERVER (default 127.0.0.1:8081), token from `micro auth token`

The node forwards the call, untouched, to a registered instance of `greeter` (its proxy):
the client needs no Micro library, only the token every call to the node carries.
"""

import os
import subprocess
import sys

import grpc

import greeter_pb2
import greeter_pb2_grpc


def token():
    if os.environ.get("MICRO_AUTH_TOKEN"):
        return os.environ["MICRO_AUTH_TOKEN"]
    return subprocess.run(
        ["micro", "auth", "token"], check=True, capture_output=True, text=True
    ).stdout.strip()


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "John"
    server = os.environ.get("MICRO_SERVER", "127.0.0.1:8081")
    with grpc.insecure_channel(server) as channel:
        say = greeter_pb2_grpc.SayStub(channel)
        md = [("authorization", "Bearer " + token())]
        reply = say.Hello(greeter_pb2.Request(name=name), metadata=md)
        print('{"msg":"%s"}' % reply.msg)
        for r in say.Stream(greeter_pb2.StreamRequest(name=name, count=2), metadata=md):
            print(r.msg)


if __name__ == "__main__":
    main()

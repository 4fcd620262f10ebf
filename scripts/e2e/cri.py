#!/usr/bin/python3
"""A minimal CRI client (runtime.v1, as kubelet speaks it) for the end-to-end tests: Debian 12 has no crictl.

Only the pod-sandbox calls are needed, so their few messages are encoded by hand after containerd 1.6's
vendored k8s.io/cri-api/pkg/apis/runtime/v1/api.proto, and gRPC comes from Debian's python3-grpcio: no code
generation, no download. Prints JSON on stdout.

    cri.py SOCKET run NAME UID NAMESPACE [HOSTPORT:CONTAINERPORT ...]   -> {"id": ...}
    cri.py SOCKET status ID                                             -> {"state", "ips", "pid"}
    cri.py SOCKET stop ID | remove ID
    cri.py SOCKET list                                                  -> {"ids": [...]}
    cri.py SOCKET update-runtime-config POD_CIDRS   (comma-separated, as kubelet sends them)
    cri.py SOCKET runtime-status                                        -> {"RuntimeReady": bool, "NetworkReady": ...}
"""
import json
import sys

import grpc

SERVICE = "/runtime.v1.RuntimeService/"


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(num, value):
    """A string, bytes (a nested message) or int field."""
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(num << 3 | 2) + varint(len(data)) + data


def decode(buf):
    """Fields of a message as {number: [values]}: ints for varints, bytes for length-delimited ones."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            size, i = read_varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(num, []).append(value)
    return fields


def read_varint(buf, i):
    n, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def first(fields, num, default=b""):
    return fields.get(num, [default])[0]


def call(channel, method, request):
    rpc = channel.unary_unary(SERVICE + method)
    return decode(rpc(request, timeout=60))


def run(channel, name, uid, namespace, *ports):
    metadata = field(1, name) + field(2, uid) + field(3, namespace) + field(4, 0)
    mappings = b""
    for p in ports:
        host, container = p.split(":")
        # protocol TCP is 0, the default, so it is left out as proto3 does.
        mappings += field(5, field(2, int(container)) + field(3, int(host)))
    config = field(1, metadata) + field(2, name) + mappings
    reply = call(channel, "RunPodSandbox", field(1, config))
    return {"id": first(reply, 1).decode()}


def status(channel, sandbox):
    reply = call(channel, "PodSandboxStatus", field(1, sandbox) + field(2, 1))
    st = decode(first(reply, 1))
    net = decode(first(st, 5))
    ips = [first(net, 1).decode()] + [first(decode(p), 1).decode() for p in net.get(2, [])]
    info = {}
    for entry in reply.get(2, []):
        kv = decode(entry)
        info[first(kv, 1).decode()] = first(kv, 2).decode()
    pid = json.loads(info["info"]).get("pid") if "info" in info else None
    return {"state": first(st, 3, 0), "ips": [ip for ip in ips if ip], "pid": pid}


def list_sandboxes(channel):
    reply = call(channel, "ListPodSandbox", b"")
    return {"ids": [first(decode(item), 1).decode() for item in reply.get(1, [])]}


def update_runtime_config(channel, pod_cidrs):
    network_config = field(1, pod_cidrs)
    call(channel, "UpdateRuntimeConfig", field(1, field(1, network_config)))
    return {}


def runtime_status(channel):
    reply = call(channel, "Status", b"")
    conditions = decode(first(reply, 1)).get(1, [])
    return {first(c, 1).decode(): bool(first(c, 2, 0)) for c in map(decode, conditions)}


def main(argv):
    socket, verb, args = argv[1], argv[2], argv[3:]
    with grpc.insecure_channel("unix://" + socket) as channel:
        if verb == "run":
            out = run(channel, *args)
        elif verb == "status":
            out = status(channel, args[0])
        elif verb in ("stop", "remove"):
            call(channel, verb.capitalize() + "PodSandbox", field(1, args[0]))
            out = {}
        elif verb == "list":
            out = list_sandboxes(channel)
        elif verb == "update-runtime-config":
            out = update_runtime_config(channel, args[0])
        elif verb == "runtime-status":
            out = runtime_status(channel)
        else:
            raise SystemExit(__doc__)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv)

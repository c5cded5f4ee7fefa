"""The switch: where a SYN is answered (bpf/lib/synack.h via bpf/switch.bpf.c), where a connection
gets offloaded (controller.OffloadTable behind the gRPC API in server.py), and how the tables
reach the data plane (maps.py, dataplane.py). `hashing.hash8` tells which front-end a client
ip:port belongs to; `client.SwitchClient` is the front-ends' way in."""

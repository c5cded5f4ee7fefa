"""The typed map layer the controller writes through: batched dump, full table, idle scan input."""

from __future__ import annotations

from miresga.bpf.layouts import OffloadEntry
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.switch.controller import Actions, Controller, Op
from miresga.switch.maps import SwitchMaps, flow_of
from miresga.switch.profiles import Profile
from miresga.switch.server import MapTables


def test_batched_dump_equals_per_key_walk():
    with BpfObject(object_path("switch"), max_entries={"sw_offload": 20000}) as obj:
        m = SwitchMaps(obj)
        for i in range(9000):  # several 4096-entry batches
            assert m.offload_insert(0x0A000000 + i, 1 + i % 60000, i % 3, now_ns=i * 7, svc=i % 5) == 0
        walked = {flow_of(k): (OffloadEntry.from_buffer_copy(v).backend, OffloadEntry.from_buffer_copy(v).last_hit_ns)
                  for k, v in obj.map("sw_offload").items()}
        batched = {k: (e.backend, e.last_hit_ns) for k, e in m.offload_items()}
        assert len(batched) == 9000 and batched == walked


def test_full_data_plane_table_reported_back_to_the_controller():
    """If the BPF map is smaller than the profile says, the refused inserts are not 'installed'."""
    with BpfObject(object_path("switch"), max_entries={"sw_offload": 4}) as obj:
        tables = MapTables(SwitchMaps(obj), {})
        ctl = Controller(["fe1"], 3, Profile("software", 100, None, 0.0), 1.0, now=0)
        st, actions = ctl.write([(0x0A000102, 1000 + i, 0, 0) for i in range(6)], [], 0)
        failed = tables.apply(actions)
        for op in failed:
            ctl.table.apply_failed(op)
        assert [op.key[1] for op in failed] == [1004, 1005]
        states = ctl.read([(0x0A000102, 1000 + i, 0) for i in range(6)])
        assert list(states.values()).count("installed") == 4 and len(ctl.table.intended) == 4
        assert tables.apply(Actions(ops=[Op("delete", (0x0A000102, 1000, 0))])) == []
        assert len(list(obj.map("sw_offload").keys())) == 3


def test_set_config_replaces_the_service_tables():
    import ipaddress
    import struct

    import pytest
    ip = ipaddress.IPv4Address
    with BpfObject(object_path("switch"), max_entries={"sw_offload": 16}) as obj:
        m = SwitchMaps(obj)
        kw = dict(key=(1, 2), mss=1460, wscale=7, sack=True, bucket_seconds=64)
        m.set_config(services=[("10.0.100.1", 80), ("10.0.100.1", 8080), ("10.0.100.2", 80)], **kw)
        assert sorted(flow_of(k) for k in m.vips.keys()) == [
            (int(ip("10.0.100.1")), 80, 0), (int(ip("10.0.100.1")), 8080, 0), (int(ip("10.0.100.2")), 80, 0)]
        assert sorted(struct.unpack("=I", v)[0] for _, v in m.vips.items()) == [0, 1, 2]   # svc
        m.set_config(services=[("10.0.100.3", 443)], **kw)
        assert [flow_of(k) for k in m.vips.keys()] == [(int(ip("10.0.100.3")), 443, 0)]
        assert len(list(m.vip_addrs.keys())) == 1 and m.get_config().n_services == 1
        assert m.get_services() == [(ip("10.0.100.3"), 443)] and m.get_services(2)[1] == (ip("0.0.0.0"), 0)
        with pytest.raises(ValueError):
            m.set_config(services=[], **kw)

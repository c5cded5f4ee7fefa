"""`miresga switch` on a testbed's switch host and `miresga status` / SwitchClient from a front-end
namespace at its gateway address: registration, writes into the real BPF offload table, token
refusal, status output, clean exit. Also the insert rates of the control path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from miresga.bpf.libbpf import BpfObject, object_path
from miresga.switch.controller import Actions, Op
from miresga.switch.dataplane import default_pin_dir, open_pinned
from miresga.switch.maps import SwitchMaps
from miresga.switch.server import MapTables

pytestmark = pytest.mark.netns

CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys, time, grpc
    from miresga.control.config import load_config
    from miresga.switch.client import ClientTls, SwitchClient
    cfg, addr, n = load_config(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ctl = cfg.switch.control
    out = {}
    with SwitchClient(addr, "wrong-" + ctl.token, tls=ClientTls.from_dir(ctl.tls_dir, "fe1", cfg.switch.name)) as bad:
        try:
            bad.stats()
        except grpc.RpcError as e:
            out["bad_token"] = e.code().name
    with SwitchClient.from_config(cfg, addr, "fe1") as c:
        out["register"] = len(c.register("fe1", "10.0.2.2")["buckets"])
        t0 = time.perf_counter()
        st = []
        for s in range(0, n, 1000):
            st += c.write([(0x0A000102, 1 + i, 0, i % 3) for i in range(s, min(n, s + 1000))], [])
        out["rate"] = n / (time.perf_counter() - t0)
        out["statuses"] = sorted(set(st))
        out["read"] = sorted(set(c.read([(0x0A000102, 1, 0), (0x0A000102, n + 5, 0)]).values()))
        out["deleted"] = c.write([], [(0x0A000102, 1, 0)])
    print(json.dumps(out))
""")


def test_switch_command_and_status_from_a_frontend(tmp_path, record_property):
    import yaml

    from miresga.control.certs import make_pki
    from miresga.testbed import Testbed
    with Testbed() as tb:
        cfg = tb.cfg  # the instance's own secrets; its certificates are made here (no Miresga runs)
        make_pki(cfg.switch.control.tls_dir, cfg.switch.name, [f.name for f in cfg.hosts.frontends])
        cfg_file = tmp_path / "cfg.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        sw = tb.ns_switch
        proc = subprocess.Popen([sys.executable, "-m", "miresga.control.cli", "switch", "--config", str(cfg_file),
                                 "--netns", sw, "--dead-after", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert "control API on port" in line, proc.stderr.read() if proc.poll() is not None else line
            assert f"services default {cfg.vip.address}:{cfg.vip.port};" in line, line
            fe = cfg.hosts.frontends[0]
            addr = f"{fe.gateway}:{cfg.switch.control.port}"
            script = tmp_path / "client.py"
            script.write_text(CLIENT_SCRIPT)
            n = 20000
            p = tb.run(fe.name, sys.executable, str(script), str(cfg_file), addr, str(n), timeout=120)
            out = json.loads(p.stdout)
            assert out["bad_token"] == "UNAUTHENTICATED"
            assert out["register"] == 128
            assert out["statuses"] == ["ok"] and out["read"] == ["absent", "installed"]
            assert out["deleted"] == ["ok"]
            record_property("grpc_bpf_inserts_per_s", int(out["rate"]))
            print(f"software profile via gRPC into BPF maps: {out['rate']:.0f} inserts/s")
            maps, pinned = open_pinned(sw)
            try:
                entries = dict(maps.offload_items())
            finally:
                pinned.close()
            assert len(entries) == n - 1 and entries[(0x0A000102, 2, 0)].backend == 1
            st = tb.run(fe.name, sys.executable, "-m", "miresga.control.cli", "status", "--config", str(cfg_file),
                        "--address", addr).stdout
            assert f"offload   {n - 1} / 143360" in st
            assert "fe1      alive" in st and "fe2      static" in st
            assert "1 unauthenticated" in st
            root = subprocess.run([sys.executable, "-m", "miresga.control.cli", "status", "--config", str(cfg_file),
                                   "--netns", sw],
                                  capture_output=True, text=True, timeout=30)
            assert root.returncode == 0 and "fe1      alive" in root.stdout, root.stderr
            # not reachable from a client's side of the switch: the data plane drops it (see also
            # test_control_security.py)
            c1 = cfg.hosts.clients[0]
            refused = tb.run(c1.name, "python3", "-c", "import socket,sys; s=socket.socket(); s.settimeout(2); "
                             f"sys.exit(s.connect_ex(('{c1.gateway}', {cfg.switch.control.port})))", check=False)
            assert refused.returncode != 0
            js = json.loads(tb.run(fe.name, sys.executable, "-m", "miresga.control.cli", "status", "--config",
                                   str(cfg_file), "--address", addr, "--json").stdout)
            assert js["counters"]["drop_guarded_port"] >= 1
            assert js["installed"] == n - 1 and js["ops"]["ok"] == n + 1
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert proc.returncode == 0, proc.stderr.read()
        assert not default_pin_dir(sw).exists()
        tc = subprocess.run(["ip", "netns", "exec", sw, "tc", "filter", "show", "dev", "p-c1", "ingress"],
                            capture_output=True, text=True).stdout
        assert "switch" not in tc


def test_insert_rate_of_the_map_adapter(record_property):
    n = 50000
    with BpfObject(object_path("switch")) as obj:
        tables = MapTables(SwitchMaps(obj), {})
        ops = [Op("insert", (0x0A000000 + (i >> 16), 1 + (i & 0xFFFF) % 65535, 0), i % 3) for i in range(n)]
        t0 = time.perf_counter()
        assert tables.apply(Actions(ops=ops)) == []
        rate = n / (time.perf_counter() - t0)
        assert sum(1 for _ in obj.map("sw_offload").keys()) == n
    record_property("map_adapter_inserts_per_s", int(rate))
    print(f"map adapter: {rate:.0f} inserts/s")
    assert rate > 5000

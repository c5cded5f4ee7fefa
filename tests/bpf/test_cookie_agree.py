"""The SYN cookie made by the switch's SYN path (bpf/lib/cookie.h) is the cookie miresga.cookie makes
and verifies, bit for bit, on many random tuples, keys and options; other keys, other 4-tuples,
altered option bits and expired buckets are rejected."""

from __future__ import annotations

import ipaddress
import random
import struct

from miresga import cookie
from miresga.bpf.libbpf import BpfObject, object_path
from miresga.bpf.testrun import TC_ACT_REDIRECT
from miresga.switch.maps import SwitchMaps

BUCKET_SECONDS = 64


def _syn(cip: int, cport: int, vip: int, vport: int, opts: bytes) -> bytes:
    opts += b"\x00" * (-len(opts) % 4)
    tcp_len = 20 + len(opts)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 0, 0, 64, 6, 0, struct.pack("!I", cip),
                     struct.pack("!I", vip))
    tcp = struct.pack("!HHIIBBHHH", cport, vport, 99, 0, (tcp_len // 4) << 4, 0x02, 65535, 0, 0) + opts
    return bytes(6) + bytes(6) + b"\x08\x00" + ip + tcp


def _client_opts(rng: random.Random) -> tuple[bytes, int, int | None, bool]:
    parts, mss, ws, sack = [], 536, None, False
    if rng.random() < 0.8:
        mss = rng.choice([rng.randrange(0, 65536), 536, 1219, 1220, 1439, 1440, 1460, 8960])
        parts.append(struct.pack("!BBH", 2, 4, mss))
    if rng.random() < 0.7:
        ws = rng.randrange(0, 16)
        parts.append(struct.pack("!BBB", 3, 3, ws))
        parts.append(b"\x01")
    if rng.random() < 0.6:
        sack = True
        parts.append(b"\x04\x02")
    if rng.random() < 0.3:
        parts.append(b"\x08\x0a" + bytes(8))  # timestamps: ignored
    rng.shuffle(parts)
    return b"".join(parts), mss, ws, sack


def test_switch_cookie_agrees_with_python_and_verifies():
    rng = random.Random(3)
    with BpfObject(object_path("switch"), max_entries={"sw_offload": 16}) as obj:
        m = SwitchMaps(obj)
        prog = obj.program("switch_ingress")
        for round_ in range(20):
            key = cookie.CookieKey(rng.getrandbits(64), rng.getrandbits(64))
            other = cookie.CookieKey(rng.getrandbits(64), rng.getrandbits(64))
            vip, vport = rng.getrandbits(32) | 1, rng.randrange(1, 65536)
            m.set_config(services=[(str(ipaddress.IPv4Address(vip)), vport)], key=(key.k0, key.k1), mss=1460,
                         wscale=7, sack=True, bucket_seconds=BUCKET_SECONDS)
            for _ in range(100):
                cip, cport = rng.getrandbits(32), rng.randrange(1, 65536)
                if cip == vip:
                    continue
                raw_opts, mss, ws, sack = _client_opts(rng)
                while True:
                    b0 = cookie.bucket_of(cookie.tai_seconds(), BUCKET_SECONDS)
                    r = prog.test_run(_syn(cip, cport, vip, vport, raw_opts))
                    if cookie.bucket_of(cookie.tai_seconds(), BUCKET_SECONDS) == b0:
                        break
                assert r.retval == TC_ACT_REDIRECT
                isn = struct.unpack("!I", r.data[38:42])[0]
                assert isn == cookie.make_cookie(key, cip, cport, vip, vport, b0, mss, ws, sack)
                want = cookie.decode_options(cookie.encode_options(mss, ws, sack))
                assert cookie.check_cookie(isn, (key,), cip, cport, vip, vport, b0) == want
                assert cookie.check_cookie(isn, (other, key), cip, cport, vip, vport, b0 + 1) == want
                # rejections: other key, other tuple, altered options, expired
                assert cookie.check_cookie(isn, (other,), cip, cport, vip, vport, b0) is None
                assert cookie.check_cookie(isn, (key,), cip ^ 1, cport, vip, vport, b0) is None
                assert cookie.check_cookie(isn, (key,), cip, cport ^ 1, vip, vport, b0) is None
                assert cookie.check_cookie(isn, (key,), cip, cport, vip ^ 1, vport, b0) is None
                assert cookie.check_cookie(isn ^ 0x10, (key,), cip, cport, vip, vport, b0) is None
                assert cookie.check_cookie(isn, (key,), cip, cport, vip, vport, b0 + 2) is None


def test_rotated_key_takes_effect_and_previous_still_verifies():
    secret, rotate = "rotation-secret-0123", 3600
    with BpfObject(object_path("switch"), max_entries={"sw_offload": 16}) as obj:
        m = SwitchMaps(obj)
        prog = obj.program("switch_ingress")
        vip = int(ipaddress.IPv4Address("10.0.100.1"))
        cur0, _ = cookie.keys_at(secret, 1000 * rotate, rotate)
        m.set_config(services=[("10.0.100.1", 80)], key=(cur0.k0, cur0.k1), mss=1460, wscale=7, sack=True,
                     bucket_seconds=BUCKET_SECONDS)
        b = cookie.bucket_of(cookie.tai_seconds(), BUCKET_SECONDS)
        isn0 = struct.unpack("!I", prog.test_run(_syn(0x0A000102, 40000, vip, 80, b"")).data[38:42])[0]
        cur1, prev1 = cookie.keys_at(secret, 1001 * rotate, rotate)
        assert prev1 == cur0
        m.set_key((cur1.k0, cur1.k1))
        assert m.get_config().key_slot == 1 and m.get_key() == (cur1.k0, cur1.k1)  # the idle slot, then flipped
        isn1 = struct.unpack("!I", prog.test_run(_syn(0x0A000102, 40000, vip, 80, b"")).data[38:42])[0]
        assert isn1 != isn0
        for isn in (isn0, isn1):  # the verifier accepts the current and the previous generation
            assert cookie.check_cookie(isn, (cur1, prev1), 0x0A000102, 40000, vip, 80, b) is not None
        assert cookie.check_cookie(isn0, (cur1,), 0x0A000102, 40000, vip, 80, b) is None

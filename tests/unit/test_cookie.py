"""The Python cookie on its own (the C twin is checked against it in tests/bpf)."""

from hypothesis import given, strategies as st

from miresga import cookie as ck

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(1, 2**16 - 1)


def test_siphash_reference_vector():
    # SipHash-2-4 paper test key 00..0f, message 00..07 (one 64-bit word): 0x93f5f5799a932462
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    m = int.from_bytes(bytes(range(8)), "little")
    assert ck.siphash24(k0, k1, (m,)) == 0x93F5F5799A932462


@given(u32, u16, u32, u16, u32, st.sampled_from([500, 536, 1220, 1400, 1440, 1460, 9000]),
       st.one_of(st.none(), st.integers(0, 14)), st.booleans())
def test_roundtrip_and_rejections(cip, cport, vip, vport, bucket, mss, ws, sack):
    key, other = ck.CookieKey.derive("s" * 16, 1), ck.CookieKey.derive("s" * 16, 2)
    c = ck.make_cookie(key, cip, cport, vip, vport, bucket, mss, ws, sack)
    opts = ck.check_cookie(c, (key,), cip, cport, vip, vport, bucket)
    assert opts is not None
    assert opts.mss <= max(mss, 536) and opts.mss in ck.MSS_TABLE
    assert opts.wscale == ws and opts.sack == sack
    assert ck.check_cookie(c, (key,), cip, cport, vip, vport, (bucket + 1) & 0xFFFFFFFF) == opts  # grace bucket
    assert ck.check_cookie(c, (key,), cip, cport, vip, vport, (bucket + 2) & 0xFFFFFFFF) is None  # expired
    assert ck.check_cookie(c, (other,), cip, cport, vip, vport, bucket) is None                 # other key
    assert ck.check_cookie(c, (key,), cip, cport ^ 1, vip, vport, bucket) is None               # other tuple
    assert ck.check_cookie(c ^ 0x10, (key,), cip, cport, vip, vport, bucket) is None            # forged options


def test_key_schedule_current_and_previous():
    cur, prev = ck.keys_at("x" * 16, 7200.5, 3600)
    assert cur == ck.CookieKey.derive("x" * 16, 2) and prev == ck.CookieKey.derive("x" * 16, 1)


def test_c_siphash_equals_the_reference():
    """The hot path hashes with siphashc; the readable siphash24 is the reference."""
    import random
    import struct

    import siphashc
    rnd = random.Random(7)
    for _ in range(2000):
        k0, k1 = rnd.getrandbits(64), rnd.getrandbits(64)
        words = tuple(rnd.getrandbits(64) for _ in range(3))
        assert siphashc.siphash(struct.pack("<QQ", k0, k1), struct.pack("<QQQ", *words)) == \
            ck.siphash24(k0, k1, words)

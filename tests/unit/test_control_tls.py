"""The control API over mutual TLS, through the real client and server: front-ends with their own
certificates work; a call without a client certificate, with one from another CA, for another
front-end's name, from the read-only operator identity, or with a wrong token is refused with
its status code and counted."""

from __future__ import annotations

import grpc
import pytest

from miresga.control.certs import ADMIN, TlsDir, make_pki
from miresga.control.config import load_config
from miresga.switch.client import ClientTls, SwitchClient
from miresga.switch.server import ControlPlane, ControlServer, MemoryTables, refusal

FRONTENDS = ["fe1", "fe2"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    good = make_pki(root / "good", "sw", FRONTENDS)
    other = make_pki(root / "other", "sw", FRONTENDS)  # same names, another CA
    return good, other


@pytest.fixture
def served(pki):
    good, _ = pki
    cfg = load_config()
    cfg = cfg.model_copy(update={"switch": cfg.switch.model_copy(update={
        "control": cfg.switch.control.model_copy(update={"tls_dir": good.path})})})
    tables = MemoryTables()
    cp = ControlPlane(cfg, tables)
    srv = ControlServer(cp, "127.0.0.1:0", tls=TlsDir(good.path)).start()
    clients = []

    def client(identity: str | None = "fe1", tls_dir: TlsDir | None = None, token: str | None = None,
               ca: TlsDir | None = None):
        d = tls_dir or good
        key, cert = d.pair(identity) if identity else (None, None)
        tls = ClientTls((ca or good).ca_pem(), "sw", key, cert)
        c = SwitchClient(f"127.0.0.1:{srv.port}", token or cfg.switch.control.token, timeout=3, tls=tls)
        clients.append(c)
        return c
    yield cp, tables, client, cfg
    for c in clients:
        c.close()
    srv.stop()


def test_frontends_with_their_certificates_work(served):
    cp, tables, client, cfg = served
    fe1, fe2 = client("fe1"), client("fe2")
    assert len(fe1.register("fe1", "10.0.2.2")["buckets"]) == 128
    assert len(fe2.register("fe2", "10.0.3.2")["buckets"]) == 128
    assert fe1.write([(0x0A000102, 40000, 0, 1)], []) == ["ok"]
    assert fe2.heartbeat("fe2")["buckets"]
    assert fe2.read([(0x0A000102, 40000, 0)]) == {(0x0A000102, 40000, 0): "installed"}
    s = client(ADMIN).stats()  # the operator identity reads
    assert {m["name"]: m["state"] for m in s["members"]} == {"fe1": "alive", "fe2": "alive"}
    assert s["refused"] == {"tls": 0, "token": 0, "identity": 0}
    assert set(tables.offload) == {(0x0A000102, 40000, 0)}


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def test_refused_and_counted(served, pki):
    _, other = pki
    cp, tables, client, cfg = served
    # TLS refuses these in the handshake: the server never sees a call
    assert _refused(lambda: client(None).write([(1, 2, 0, 0)], [])).code() == grpc.StatusCode.UNAVAILABLE
    assert _refused(lambda: client("fe1", tls_dir=other).write([(1, 2, 0, 0)], [])).code() == grpc.StatusCode.UNAVAILABLE
    # a client that trusts another CA does not accept the switch either
    assert _refused(lambda: client("fe1", tls_dir=other, ca=other).stats()).code() == grpc.StatusCode.UNAVAILABLE
    # a good certificate, another front-end's name
    fe1 = client("fe1")
    for call, words in ((lambda: fe1.register("fe2", "10.0.3.2"), "fe1 may register only as itself, not as 'fe2'"),
                        (lambda: fe1.heartbeat("fe2"), "fe1 may heartbeat only as itself")):
        e = _refused(call)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and words in e.details(), e.details()
    # the operator identity only reads
    e = _refused(lambda: client(ADMIN).write([(0x0A000102, 1, 0, 0)], []))
    assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "read-only" in e.details()
    # a good certificate, a wrong token: the second factor
    e = _refused(lambda: client("fe2", token="wrong-token-wrong-token").register("fe2", "10.0.3.2"))
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED
    s = client(ADMIN).stats()
    assert s["refused"] == {"tls": 3, "token": 1, "identity": 3}, s["refused"]
    assert s["unauthenticated"] == 1
    assert tables.offload == {} and {m["state"] for m in s["members"]} == {"static"}


@pytest.mark.parametrize("method,names,field,want", [
    ("Register", {"fe1"}, "fe1", None),
    ("Register", {"fe1"}, "fe2", "may register only as itself"),
    ("Heartbeat", {"fe2"}, "fe1", "may heartbeat only as itself"),
    ("Write", {"fe1"}, None, None),
    ("Write", {ADMIN}, None, "read-only"),
    ("Stats", {ADMIN}, None, None),
    ("Read", {"fe2"}, None, None),
    ("Stats", {"sw"}, None, "names no front-end"),
    ("Register", set(), "fe1", "names no front-end"),
    ("Write", {"fe1", "fe2"}, None, "several front-ends"),
], ids=lambda x: str(x))
def test_policy_as_data(method, names, field, want):
    class Req:
        name = field
    why = refusal(method, names, Req(), set(FRONTENDS), {ADMIN})
    assert (why is None) if want is None else (want in why)


def test_certs_make_command(tmp_path):
    """`miresga certs make` writes a CA, the switch's server certificate and one client
    certificate per front-end; a second run for a new front-end reuses the CA."""
    from cryptography import x509

    from miresga.control.cli import main
    out = tmp_path / "pki"
    assert main(["certs", "make", "--out", str(out), "--switch", "sw", "--frontend", "fe1", "--frontend", "fe2"]) == 0
    ca = (out / "ca.crt").read_bytes()
    assert main(["certs", "make", "--out", str(out), "--switch", "sw", "--frontend", "fe3"]) == 0
    assert (out / "ca.crt").read_bytes() == ca
    for name in ("sw", "fe1", "fe2", "fe3", ADMIN):
        cert = x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={name}"
        assert cert.issuer == x509.load_pem_x509_certificate(ca).subject
        assert (out / f"{name}.key").stat().st_mode & 0o077 == 0
    assert (out / "ca.key").stat().st_mode & 0o077 == 0

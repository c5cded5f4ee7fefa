"""Certificates of the switch's control API (mTLS) and `miresga certs make`.

One directory holds a deployment's control-plane PKI, named by identity:

    ca.crt  ca.key          the CA (keep ca.key off the hosts; it only signs)
    <switch>.crt/.key       the controller's server certificate (CN and DNS SAN = switch.name)
    <fe>.crt/.key           one client certificate per front-end (CN and DNS SAN = its host name)
    admin.crt/.key          operators' read-only client certificate (`miresga status`)

The switch serves with its own pair and trusts only ca.crt; each front-end presents its own pair
and checks the server against ca.crt under the switch's name (not its address, so one server
certificate serves every gateway address). The name in a client certificate is the identity the
controller enforces: a front-end may register, heartbeat and write only as itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ADMIN = "admin"
CA_NAME = "miresga control CA"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(common_name: str = CA_NAME, days: int = 3650):
    """A self-signed CA: (key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key, ca_cert, name: str, *, server: bool, ips: tuple[str, ...] = (), days: int = 825):
    """A leaf certificate for `name` (CN and DNS SAN), for a server or a client: (key, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = _new_key()
    now = _now()
    sans: list = [x509.DNSName(name)] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)


@dataclass(frozen=True)
class TlsDir:
    """Where a deployment's control-plane certificates live (config: switch.control.tls_dir)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def ca(self) -> Path:
        return self.path / "ca.crt"

    def cert(self, name: str) -> Path:
        return self.path / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.path / f"{name}.key"

    def pair(self, name: str) -> tuple[bytes, bytes]:
        """(private key PEM, certificate chain PEM) of an identity; a clear error if missing."""
        k, c = self.key(name), self.cert(name)
        for p in (k, c):
            if not p.exists():
                raise FileNotFoundError(f"{p}: no certificate for {name!r} in {self.path} "
                                        f"(make one with `miresga certs make --out {self.path} ...`)")
        return k.read_bytes(), c.read_bytes()

    def ca_pem(self) -> bytes:
        if not self.ca.exists():
            raise FileNotFoundError(f"{self.ca}: no CA certificate (make one with `miresga certs make --out {self.path}`)")
        return self.ca.read_bytes()


def make_pki(out: str | Path, switch: str, frontends: list[str], *, admin: str | None = ADMIN,
             ips: tuple[str, ...] = (), days: int = 825) -> TlsDir:
    """Write (or extend) a PKI in `out`: reuse the CA found there, else make one; issue the
    switch's server certificate and a client certificate per front-end (and for `admin`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    d = TlsDir(Path(out))
    names = [switch, *frontends] + ([admin] if admin else [])
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"identity names must be distinct, repeated: {sorted(dup)}")
    if d.ca.exists() and (d.path / "ca.key").exists():
        ca_cert = x509.load_pem_x509_certificate(d.ca.read_bytes())
        ca_key = serialization.load_pem_private_key((d.path / "ca.key").read_bytes(), password=None)
    else:
        ca_key, ca_cert = make_ca()
        _write(d.path / "ca.key", _pem_key(ca_key), True)
        _write(d.ca, _pem_cert(ca_cert), False)
    for name in names:
        key, cert = issue(ca_key, ca_cert, name, server=name == switch, ips=ips if name == switch else (), days=days)
        _write(d.key(name), _pem_key(key), True)
        _write(d.cert(name), _pem_cert(cert), False)
    return d


def _make(args: argparse.Namespace) -> int:
    switch, frontends = args.switch, list(args.frontend or [])
    if args.config:
        from miresga.control.config import load_config_or_exit
        cfg = load_config_or_exit(args.config, status=1)
        switch = switch or cfg.switch.name
        frontends = frontends or [h.name for h in cfg.hosts.frontends]
    if not switch or not frontends:
        print("certs make: name the switch (--switch) and at least one front-end (--frontend), or give --config",
              file=sys.stderr)
        return 1
    try:
        d = make_pki(args.out, switch, frontends, admin=None if args.no_admin else ADMIN, ips=tuple(args.ip or ()),
                     days=args.days)
    except (ValueError, OSError) as e:
        print(f"certs make: {e}", file=sys.stderr)
        return 1
    print(f"{d.path}: CA ca.crt (ca.key: keep it off the hosts), server {switch}.crt, clients "
          + ", ".join(f"{n}.crt" for n in frontends) + ("" if args.no_admin else f", {ADMIN}.crt (read-only)")
          + f"\nset switch.control.tls_dir: {d.path.resolve()} (each host needs ca.crt and its own .crt/.key)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("certs", help="certificates of the control API (mTLS)")
    cs = c.add_subparsers(dest="certs_cmd", required=True)
    m = cs.add_parser("make", help="make a CA, the switch's server certificate and one per front-end",
                      description="Reuses the CA already in --out (to add front-ends); otherwise makes one.")
    m.add_argument("--out", required=True, help="directory to write into (the config's switch.control.tls_dir)")
    m.add_argument("--switch", help="the switch's name (config switch.name); the front-ends check it")
    m.add_argument("--frontend", action="append", help="a front-end's host name (repeat)")
    m.add_argument("--config", help="take the switch and front-end names from this config")
    m.add_argument("--ip", action="append", help="an address to add to the server certificate's SAN (repeat)")
    m.add_argument("--days", type=int, default=825, help="validity of the leaf certificates")
    m.add_argument("--no-admin", action="store_true", help=f"no read-only operator certificate ({ADMIN})")
    m.set_defaults(func=_make)

"""A small project CA and the brokers' server certificates, for TLS on every MQTT link.

The CA (a key and a self-signed certificate) signs one server certificate per broker; every
client (boards, gateway, central, bridges) trusts that CA alone and checks the broker's name
against the certificate's subject alternative names. Keys are EC P-256 (what mbedTLS on an
ESP32 handles quickly and in little memory), written mode 0600. An existing CA is never
overwritten unless asked: every board trusts it, so replacing it means reprovisioning them.

    python -m recarga.core.certs ca --dir /etc/recarga/tls
    python -m recarga.core.certs server --dir /etc/recarga/tls --name berlin-broker \\
        --host berlin.recarga.example --host 10.0.0.5

Operators with their own PKI skip this and give the brokers and clients their own files
(docs/deployment.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import grp
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_DAYS = 3650  # the boards pin the CA: long-lived, replaced only with a reprovisioning
SERVER_DAYS = 825  # a server certificate is renewed on the broker alone
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class CertError(RuntimeError):
    """Certificates cannot be made (files exist, unreadable CA, bad host or name)."""


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


def ca_files(directory: str | Path) -> CertFiles:
    d = Path(directory)
    return CertFiles(d / CA_CERT, d / CA_KEY)


def server_files(directory: str | Path, name: str) -> CertFiles:
    """Where `server` writes the certificate and key called `name` (e.g. berlin-broker)."""
    if not name or not set(name) <= _NAME_CHARS or name.startswith("."):
        raise CertError(f"certificate name {name!r} must be letters, digits, '-', '_' or '.'")
    if name == Path(CA_CERT).stem:
        raise CertError(f"certificate name {name!r} is the CA's")
    d = Path(directory)
    return CertFiles(d / f"{name}.crt", d / f"{name}.key")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write `data` with `mode` from the start (a key is never readable by others, not even briefly)."""
    if overwrite:
        path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # whatever the umask took away


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _subject_alt_name(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            label_ok = all(0 < len(p) <= 63 and set(p) <= _NAME_CHARS - {".", "_"} for p in host.split("."))
            if not label_ok or len(host) > 253:
                raise CertError(f"host {host!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host.lower()))
    return x509.SubjectAlternativeName(names)


def make_ca(directory: str | Path, *, common_name: str = "Recarga project CA", days: int = CA_DAYS,
            overwrite: bool = False) -> CertFiles:
    """A CA key (0600) and its self-signed certificate (0644) in `directory`. Refuses
    (CertError) when either file exists, unless `overwrite`."""
    files = ca_files(directory)
    if not overwrite:
        existing = [str(p) for p in (files.cert, files.key) if p.exists()]
        if existing:
            raise CertError(f"{', '.join(existing)} exists: every board trusts this CA; pass --force "
                            "(overwrite=True) only to replace it and reprovision every device")
    Path(directory).mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    _write(files.key, _pem_key(key), 0o600, overwrite)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)
    return files


def _load_ca(directory: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    files = ca_files(directory)
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except OSError as e:
        raise CertError(f"CA in {directory}: {e} (make one with `python -m recarga.core.certs ca`)") from None
    except ValueError as e:
        raise CertError(f"CA in {directory}: not a PEM certificate and key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"CA key {files.key} is not an EC key")
    return cert, key


def make_server_cert(directory: str | Path, name: str, hosts: Sequence[str], *, days: int = SERVER_DAYS,
                     overwrite: bool = False, key_group: str | None = None) -> CertFiles:
    """A broker's key (0600) and certificate (0644), signed by the CA in `directory`, valid
    for `hosts` (DNS names and IP addresses: the names clients connect to and verify).
    `key_group`: the key is mode 0640 with that group instead (Mosquitto 2.0 reads its key
    after switching from root to its own account)."""
    gid = None
    if key_group is not None:
        try:
            gid = grp.getgrnam(key_group).gr_gid
        except KeyError:
            raise CertError(f"group {key_group!r} does not exist on this machine") from None
    if not hosts:
        raise CertError("a server certificate needs at least one host name or IP address")
    files = server_files(directory, name)
    if not overwrite:
        existing = [str(p) for p in (files.cert, files.key) if p.exists()]
        if existing:
            raise CertError(f"{', '.join(existing)} exists; pass --force (overwrite=True) to renew it")
    san = _subject_alt_name(hosts)
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(san, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(files.key, _pem_key(key), 0o600, overwrite)
    if gid is not None:
        os.chown(files.key, -1, gid)
        os.chmod(files.key, 0o640)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recarga.core.certs",
                                description="Make the project CA and the brokers' TLS server certificates.")
    sub = p.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help=f"make the CA ({CA_CERT}, {CA_KEY}) in DIR")
    ca.add_argument("--dir", required=True, type=Path)
    ca.add_argument("--name", default="Recarga project CA", help="the CA's common name")
    ca.add_argument("--days", type=int, default=CA_DAYS)
    ca.add_argument("--force", action="store_true", help="replace an existing CA (every device must be reprovisioned)")
    srv = sub.add_parser("server", help="make NAME.crt and NAME.key signed by the CA in DIR")
    srv.add_argument("--dir", required=True, type=Path, help="the CA's directory; the files go there too")
    srv.add_argument("--name", required=True, help="file name stem, e.g. berlin-broker")
    srv.add_argument("--host", action="append", required=True, metavar="NAME_OR_IP",
                     help="a DNS name or IP address clients connect to (repeat; the first is the subject)")
    srv.add_argument("--days", type=int, default=SERVER_DAYS)
    srv.add_argument("--key-group", metavar="GROUP",
                     help="make the key readable by GROUP (0640), e.g. mosquitto for Debian's broker")
    srv.add_argument("--force", action="store_true", help="replace an existing certificate of that name")
    args = p.parse_args(argv)
    if args.days < 1:
        p.error("--days must be at least 1")
    try:
        if args.command == "ca":
            files = make_ca(args.dir, common_name=args.name, days=args.days, overwrite=args.force)
        else:
            files = make_server_cert(args.dir, args.name, args.host, days=args.days, overwrite=args.force,
                                     key_group=args.key_group)
    except (CertError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(files.cert)
    print(files.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())

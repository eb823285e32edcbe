"""recarga.core.certs: the project CA and the brokers' server certificates."""
from __future__ import annotations

import grp
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from recarga.core import certs


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_is_a_self_signed_ec_p256_ca_with_an_owner_only_key(tmp_path: Path):
    files = certs.make_ca(tmp_path)
    ca = load(files.cert)
    assert ca.subject == ca.issuer
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    ca.verify_directly_issued_by(ca)
    assert mode(files.key) == 0o600 and mode(files.cert) == 0o644


def test_server_certificate_names_its_hosts_and_is_signed_by_the_ca(tmp_path: Path):
    ca = certs.make_ca(tmp_path)
    files = certs.make_server_cert(tmp_path, "berlin-broker", ["berlin.recarga.example", "10.0.0.5", "::1"])
    cert = load(files.cert)
    cert.verify_directly_issued_by(load(ca.cert))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["berlin.recarga.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert mode(files.key) == 0o600 and files.cert == tmp_path / "berlin-broker.crt"


def test_python_ssl_accepts_the_chain_for_the_named_host_only(tmp_path: Path):
    """What every CPython client does (recarga.core.mqtt_tls): the server's chain loads, and a
    context trusting the CA checks names against the SAN (checked here without a socket, through
    a memory BIO handshake)."""
    ca = certs.make_ca(tmp_path)
    srv = certs.make_server_cert(tmp_path, "b", ["localhost", "127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(srv.cert, srv.key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=str(ca.cert))

    def handshake(name: str) -> None:
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        c = client.wrap_bio(c_in, c_out, server_hostname=name)
        s = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                peer_in.write(out.read())
        c.do_handshake()

    handshake("localhost")
    handshake("127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|IP address mismatch"):
        handshake("elsewhere.example")


def test_an_existing_ca_is_not_overwritten_unless_forced(tmp_path: Path):
    first = certs.make_ca(tmp_path).cert.read_bytes()
    with pytest.raises(certs.CertError, match="exists.*reprovision"):
        certs.make_ca(tmp_path)
    assert certs.ca_files(tmp_path).cert.read_bytes() == first
    certs.make_ca(tmp_path, overwrite=True)
    assert certs.ca_files(tmp_path).cert.read_bytes() != first


def test_an_existing_server_certificate_is_not_overwritten_unless_forced(tmp_path: Path):
    certs.make_ca(tmp_path)
    certs.make_server_cert(tmp_path, "b", ["localhost"])
    with pytest.raises(certs.CertError, match="exists"):
        certs.make_server_cert(tmp_path, "b", ["elsewhere"])
    certs.make_server_cert(tmp_path, "b", ["elsewhere"], overwrite=True)
    san = load(tmp_path / "b.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["elsewhere"]


@pytest.mark.parametrize(("name", "hosts", "message"), [
    ("b", [], "at least one host"),
    ("b", ["has space"], "neither an IP address nor a DNS name"),
    ("b", ["bad..dots"], "neither an IP address nor a DNS name"),
    ("../up", ["localhost"], "certificate name"),
    ("ca", ["localhost"], "is the CA's"),
])
def test_bad_server_certificate_requests_are_refused(tmp_path: Path, name, hosts, message):
    certs.make_ca(tmp_path)
    with pytest.raises(certs.CertError, match=message):
        certs.make_server_cert(tmp_path, name, hosts)


def test_server_certificate_without_a_ca_says_how_to_make_one(tmp_path: Path):
    with pytest.raises(certs.CertError, match="recarga.core.certs ca"):
        certs.make_server_cert(tmp_path, "b", ["localhost"])


def test_command_line(tmp_path: Path, capsys):
    assert certs.main(["ca", "--dir", str(tmp_path)]) == 0
    assert certs.main(["server", "--dir", str(tmp_path), "--name", "central", "--host", "central.example"]) == 0
    assert (tmp_path / "central.key").exists()
    capsys.readouterr()
    assert certs.main(["ca", "--dir", str(tmp_path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert certs.main(["ca", "--dir", str(tmp_path), "--force"]) == 0


def test_key_group_lets_the_brokers_account_read_the_key(tmp_path: Path):
    group = grp.getgrgid(os.getegid()).gr_name
    certs.make_ca(tmp_path)
    files = certs.make_server_cert(tmp_path, "b", ["localhost"], key_group=group)
    assert mode(files.key) == 0o640 and files.key.stat().st_gid == os.getegid()
    with pytest.raises(certs.CertError, match="group 'no-such-group-x' does not exist"):
        certs.make_server_cert(tmp_path, "c", ["localhost"], key_group="no-such-group-x")

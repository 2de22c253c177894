"""TLS for `dereflect demo serve --lan`: a local CA and a server certificate for this machine's addresses.

Phones allow the camera only on a secure origin, so serving to a phone on the network needs HTTPS.
uvicorn does the TLS; this module only makes (once) and loads the certificate it uses.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from dereflect.errors import DereflectError, UsageError

#: The local CA signs certificates (and revocation lists) and nothing else.
CA_KEY_USAGE = dict.fromkeys(
    ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only", "decipher_only"),
    False,
) | {"key_cert_sign": True, "crl_sign": True}


def cert_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dereflect" / "demo-tls"


def ensure_certificate(folder: Path, hosts: list[str], days: int = 365) -> tuple[Path, Path, Path]:
    """(certificate chain, key, CA certificate) for `hosts`, made once and kept in `folder`.

    A small local CA signs the server certificate: a phone that installs `ca.pem` as a trusted
    CA then gets a valid HTTPS origin (needed for the service worker, so for installing the app
    and offline use); without it the browser warns once and the camera still works. The server
    certificate is remade when a host is missing from it or it is about to expire; the CA stays,
    so a phone trusts it once.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise UsageError(None, "--lan needs the `cryptography` package: pip install 'dereflect[demo]'") from None

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_pem, ca_key_pem = folder / "ca.pem", folder / "ca-key.pem"
    cert_pem, key_pem = folder / "server.pem", folder / "server-key.pem"
    now = datetime.now(timezone.utc)

    def write_key(path: Path, key: Any) -> None:
        data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    if ca_pem.is_file() and ca_key_pem.is_file():
        ca_cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_pem.read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dereflect demo local CA ({socket.gethostname()})")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(**CA_KEY_USAGE), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        write_key(ca_key_pem, ca_key)
        ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        cert_pem.unlink(missing_ok=True)

    wanted = sorted(set(hosts) | {"localhost", "127.0.0.1"})
    if cert_pem.is_file() and key_pem.is_file():
        cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
        if set(wanted) <= have and cert.not_valid_after_utc - now > timedelta(days=7):
            return cert_pem, key_pem, ca_pem

    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for host in wanted:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dereflect demo")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=min(days, 397)))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_key(key_pem, key)
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM))
    return cert_pem, key_pem, ca_pem


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DereflectError(cert, f"cannot load the TLS certificate/key ({exc})") from None
    return ctx

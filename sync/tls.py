"""TLS on the sync link: always on, with no CA needed.

Each appliance generates its own key and a self-signed certificate at first use
(``HOME/tls/sync.key``, 0600, and ``sync.crt``). The client accepts whatever certificate the
server presents, then binds it into every request's MAC (``auth``: the destination is the
certificate's SHA-256 fingerprint): the real server refuses a request signed for another
certificate, so a man in the middle, who cannot present the server's certificate, learns
nothing he can use and can answer nothing the client believes. Both ends are authenticated
(the server by its certificate under the secret, the client by the secret), and every byte
is encrypted.

An operator's PKI stays possible: ``[sync] tls_cert``/``tls_key`` replace the generated pair,
and ``tls_ca`` makes both ends verify the other's chain (client certificates required).

Error contract: ``server_context``/``client_context`` raise ``UsageError`` for unreadable or
mismatched files (with the path); ``ensure_certificate`` raises ``DssyncError`` subclasses from
the file system (``write_private``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl

from dssync.config import SyncConfig
from dssync.errors import UsageError
from dssync.layout import write_private

DIR = "tls"
KEY_FILE = "sync.key"
CERT_FILE = "sync.crt"


def paths(home: str) -> tuple[str, str]:
    """The generated (certificate, key) of the appliance at ``home``."""
    d = os.path.join(home, DIR)
    return os.path.join(d, CERT_FILE), os.path.join(d, KEY_FILE)


def ensure_certificate(home: str, name: str) -> tuple[str, str]:
    """The appliance's generated certificate and key, made on first use (EC P-256, ten years)."""
    cert, key = paths(home)
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pk = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dssync {name}"[:64])])
    now = datetime.datetime.now(datetime.UTC)
    crt = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(pk.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
           .not_valid_after(now + datetime.timedelta(days=3650)).sign(pk, hashes.SHA256()))
    os.makedirs(os.path.dirname(cert), mode=0o700, exist_ok=True)
    write_private(key, pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    write_private(cert, crt.public_bytes(serialization.Encoding.PEM))
    return cert, key


def fingerprint(der: bytes) -> str:
    """A certificate's identity on the link: SHA-256 of its DER form, hex."""
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert_path: str) -> str:
    """The fingerprint of the first certificate in a PEM file."""
    try:
        with open(cert_path, encoding="ascii") as f:
            pem = f.read()
        start = pem.index("-----BEGIN CERTIFICATE-----")
        end = pem.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
        return fingerprint(ssl.PEM_cert_to_DER_cert(pem[start:end]))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the sync certificate {cert_path}: {exc}",
                         hint="point [sync] tls_cert at a PEM file, or clear it to use a generated one") from None


def server_context(home: str, name: str, cfg: SyncConfig) -> tuple[ssl.SSLContext, str]:
    """The server's context and its certificate's fingerprint (what callers sign for)."""
    cert, key = (cfg.tls_cert, cfg.tls_key or cfg.tls_cert) if cfg.tls_cert else ensure_certificate(home, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        if cfg.tls_ca:
            ctx.load_verify_locations(cfg.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the sync TLS files ({cert}, {key}, {cfg.tls_ca or 'no CA'}): {exc}",
                         hint="check [sync] tls_cert, tls_key and tls_ca") from None
    return ctx, file_fingerprint(cert)


def client_context(cfg: SyncConfig) -> ssl.SSLContext:
    """The client's context: an operator's CA verifies the server's chain; without one, any
    certificate is accepted here and bound by the MAC instead (module docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # peers are addressed by IP; the certificate is bound by the MAC
    try:
        if cfg.tls_ca:
            ctx.load_verify_locations(cfg.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.tls_cert:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or cfg.tls_cert)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the sync TLS files ({cfg.tls_cert or 'no certificate'}, "
                         f"{cfg.tls_ca or 'no CA'}): {exc}", hint="check [sync] tls_cert, tls_key and tls_ca") from None
    return ctx

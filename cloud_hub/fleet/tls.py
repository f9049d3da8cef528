"""The fleet's certificate authority: a CA of the hub's own, the broker's server certificate, and
client certificates for devices.

`edgepilot hub broker-config --tls` keeps these in the broker files' directory
(`{data_dir}/mosquitto/`):

    ca.key       the CA's private key (0600): it stays on the hub
    ca.crt       the CA's certificate: agents and the hub verify the broker against it
    server.key   the broker's private key (0600)
    server.crt   the broker's certificate, signed by the CA, naming the broker's host names and
                 IP addresses (subject alternative names: clients check the name they dial)

The CA is made once and then kept (devices trust it; a new one would strand them). The server
certificate is issued again when the names asked for change, when it nears its expiry, or when
it was not signed by the CA on disk. Keys are ECDSA P-256, which every TLS stack a Raspberry Pi or
a Jetson runs accepts.

`sign_device_certificate` signs a device's public key (or its CSR) with the device id as common
name, for a broker that takes the client certificate's CN as the username
(`require_certificate true` + `use_identity_as_username true`): the device's private key never
leaves it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.core.fs import write_atomic

__all__ = [
    "CA_DAYS",
    "SERVER_DAYS",
    "CertificateAuthority",
    "TlsFiles",
    "ensure_server_certificate",
    "issue_server_certificate",
    "load_certificate",
    "sign_device_certificate",
    "write_key",
]

CA_DAYS = 3650
SERVER_DAYS = 825
DEVICE_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)

IssuerKey = ec.EllipticCurvePrivateKey
SubjectKey = ec.EllipticCurvePublicKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_key(path: Path, key: IssuerKey) -> None:
    """A private key as unencrypted PKCS#8 PEM, mode 0600 (read by the broker as this user)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, 0o600)


def write_certificate(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _load_key(path: Path) -> IssuerKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def _san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(h.strip() for h in hosts if h.strip()):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _san_strings(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value) for n in ext}


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA and the broker's certificate live (the broker files' directory)."""

    directory: Path

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"


@dataclass(frozen=True)
class CertificateAuthority:
    key: IssuerKey
    cert: x509.Certificate

    @classmethod
    def create(
        cls, name: str = "EdgePilot fleet CA", *, days: int = CA_DAYS
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, files: TlsFiles) -> CertificateAuthority:
        return cls(_load_key(files.ca_key), load_certificate(files.ca_cert))

    @classmethod
    def load_or_create(cls, files: TlsFiles) -> CertificateAuthority:
        """The CA on disk, made (key 0600, certificate) the first time."""
        if files.ca_key.exists() and files.ca_cert.exists():
            return cls.load(files)
        ca = cls.create()
        write_key(files.ca_key, ca.key)
        write_certificate(files.ca_cert, ca.cert)
        return ca

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def _builder(self, subject: str, public_key: SubjectKey, days: int) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )

    def issue_server(
        self, hosts: Sequence[str], *, days: int = SERVER_DAYS
    ) -> tuple[IssuerKey, x509.Certificate]:
        """A fresh key and a server certificate for `hosts` (DNS names or IP addresses)."""
        names = _san(hosts)
        if not names:
            raise ValueError("a server certificate needs at least one host name or IP address")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(str(names[0].value), key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return key, cert

    def sign_device(
        self,
        device_id: str,
        public_key: SubjectKey | x509.CertificateSigningRequest,
        *,
        days: int = DEVICE_DAYS,
    ) -> x509.Certificate:
        """A client certificate for `device_id` (CN) over the device's own public key or CSR.

        A CSR must carry a valid signature (proof its sender holds the private key); its
        subject is ignored: the CN is always the device id the hub registered."""
        if isinstance(public_key, x509.CertificateSigningRequest):
            if not public_key.is_signature_valid:
                raise ValueError("the CSR's signature does not verify")
            key = public_key.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError("the CSR's key is not an EC key")
            public_key = key
        return (
            self._builder(device_id, public_key, days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )


def sign_device_certificate(
    files: TlsFiles,
    device_id: str,
    public_key: SubjectKey | x509.CertificateSigningRequest,
    *,
    days: int = DEVICE_DAYS,
) -> str:
    """PEM client certificate for a device, signed by the CA in `files` (which must exist)."""
    cert = CertificateAuthority.load(files).sign_device(device_id, public_key, days=days)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue_server_certificate(
    ca: CertificateAuthority,
    hosts: Sequence[str],
    key_path: Path,
    cert_path: Path,
    *,
    days: int = SERVER_DAYS,
) -> x509.Certificate:
    """Issue a server certificate for `hosts` and write it with its key (0600)."""
    key, cert = ca.issue_server(hosts, days=days)
    write_key(key_path, key)
    write_certificate(cert_path, cert)
    return cert


def _still_good(ca: CertificateAuthority, files: TlsFiles, hosts: Sequence[str]) -> bool:
    if not (files.server_key.exists() and files.server_cert.exists()):
        return False
    try:
        cert = load_certificate(files.server_cert)
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, OSError):
        return False
    wanted = {str(n.value) for n in _san(hosts)}
    return _san_strings(cert) == wanted and cert.not_valid_after_utc - _now() > RENEW_BEFORE


def ensure_server_certificate(files: TlsFiles, hosts: Sequence[str]) -> bool:
    """Make the CA if there is none, and the broker's certificate for `hosts` unless the one on
    disk already names exactly them, was signed by this CA and is not near its expiry.
    True when a certificate was issued (a running broker must be restarted to use it)."""
    ca = CertificateAuthority.load_or_create(files)
    if _still_good(ca, files, hosts):
        return False
    issue_server_certificate(ca, hosts, files.server_key, files.server_cert)
    return True

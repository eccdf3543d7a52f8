"""The QUIC certificate: the configured one, or a self-signed one generated on first start."""
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import Config, state_dir


def tls_paths(config: Config) -> tuple[Path, Path]:
    """(certificate, key): configured, or generated once into the state directory and reused."""
    if config.server.tls_cert:
        return Path(config.server.tls_cert), Path(config.server.tls_key)
    d = state_dir(config)
    cert, key = d / "quic-cert.pem", d / "quic-key.pem"
    if not cert.exists() or not key.exists():
        generate_self_signed(cert, key, config.server.host)
    return cert, key


def generate_self_signed(cert_path: Path, key_path: Path, host: str = "127.0.0.1",
                         days: int = 825) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atp-server")])
    sans: list = [x509.DNSName("localhost")]
    for ip in {"127.0.0.1", "::1", host}:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            sans.append(x509.DNSName(ip))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

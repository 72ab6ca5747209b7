"""Credentials and configuration for Flower's deployment engine (SuperLink + SuperNodes).

- ``make_credentials``: a private CA, a SuperLink certificate for the given hosts (TLS), and
  one P-384 key pair per SuperNode in OpenSSH format (SuperNode authentication). Private
  keys are written with mode 0600.
- ``write_flower_config``: the ``flwr`` CLI's connection file (``$FLWR_HOME/config.toml``)
  naming the SuperLink's address and the CA to trust.
- ``superlink_command`` / ``supernode_command``: the exact commands, with TLS, SuperNode
  authentication and runtime dependency installation disabled.

The README's "Deployment" section walks through them on two or more machines.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..atomic import write_bytes, write_text

APP_DIR = Path(__file__).parent / "app"
SUPERLINK_PORT = 9093  # Flower 1.42 serves its Fleet, Control and Runtime APIs on one HTTPS port


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _private(path: Path, data: bytes) -> None:
    write_bytes(path, data, mode=0o600)  # 0600 before the key is written, never after


def make_credentials(out: str | Path, nodes: int, hosts: list[str] | None = None, days: int = 365) -> dict:
    """Write ``ca.crt``, ``server.pem``/``server.key`` and ``node-<i>`` / ``node-<i>.pub``."""
    out = Path(out)
    hosts = hosts or ["127.0.0.1", "localhost"]
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("baim federation CA"))
        .issuer_name(_name("baim federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server, server_key = _server_cert(ca, ca_key, hosts, days)
    write_bytes(out / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    _private(out / "ca.key", _pem_key(ca_key))
    write_bytes(out / "server.pem", server.public_bytes(serialization.Encoding.PEM))
    _private(out / "server.key", _pem_key(server_key))
    for i in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        _private(
            out / f"node-{i}",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        write_bytes(
            out / f"node-{i}.pub",
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n",
        )
    return {"ca": str(out / "ca.crt"), "nodes": [str(out / f"node-{i}") for i in range(nodes)]}


def _server_cert(ca: x509.Certificate, ca_key, hosts: list[str], days: int):
    """A TLS server certificate for ``hosts`` signed by the CA, and its key."""
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return server, server_key


def issue_server_cert(creds: str | Path, name: str, hosts: list[str], days: int = 365) -> dict:
    """``NAME.pem``/``NAME.key``: a TLS certificate for another service (the GenAI registry or an
    edge service) from the same private CA as the Flower deployment, so one ``ca.crt`` is
    trusted everywhere."""
    from ..errors import ConfigError

    creds = Path(creds)
    try:
        ca = x509.load_pem_x509_certificate((creds / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((creds / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{creds}: needs ca.crt and ca.key from `baim deploy credentials` ({exc})") from exc
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"certificate name {name!r}: use a plain file stem such as 'registry'")
    cert, key = _server_cert(ca, ca_key, hosts, days)
    write_bytes(creds / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _private(creds / f"{name}.key", _pem_key(key))
    return {"cert": str(creds / f"{name}.pem"), "key": str(creds / f"{name}.key"), "ca": str(creds / "ca.crt")}


def write_flower_config(flwr_home: str | Path, address: str, ca_cert: str | Path, name: str = "baim") -> Path:
    """The flwr CLI's connection file: ``flwr run``/``flwr supernode register`` use ``name``."""
    text = (
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n'
        f'root-certificates = "{Path(ca_cert).resolve()}"\n'
    )
    return write_text(Path(flwr_home) / "config.toml", text)


def _bin(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def superlink_command(creds: str | Path, host: str = "127.0.0.1", port: int = SUPERLINK_PORT) -> list[str]:
    """``host`` is the address to listen on: 127.0.0.1 on loopback, the machine's own
    address (or 0.0.0.0) when SuperNodes connect from other machines."""
    creds = Path(creds)
    return [
        _bin("flower-superlink"),
        "--ssl-ca-certfile",
        str(creds / "ca.crt"),
        "--ssl-certfile",
        str(creds / "server.pem"),
        "--ssl-keyfile",
        str(creds / "server.key"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]


def supernode_command(
    creds: str | Path,
    key: str | Path,
    edge: int,
    run_dir: str | Path,
    superlink: str = f"127.0.0.1:{SUPERLINK_PORT}",
    runtime_port: int = 9094,
    data_dir: str | None = None,
) -> list[str]:
    config = f"edge={edge} run-dir='{Path(run_dir).resolve()}'"
    if data_dir:
        config += f" data-dir='{data_dir}'"
    return [
        _bin("flower-supernode"),
        "--superlink",
        superlink,
        "--root-certificates",
        str(Path(creds) / "ca.crt"),
        "--auth-supernode-private-key",
        str(key),
        "--node-config",
        config,
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
    ]

"""A throw-away PKI for TLS tests, made with the openssl CLI.

    pki = make_pki(tmp_path / "pki")              # server certificate for 127.0.0.1
    pki.ca_cert, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key

One CA (EC P-256, valid one day) signs a server certificate (subjectAltName = the hostname,
as an IP or a DNS name; extendedKeyUsage serverAuth) and a client certificate (CN AZ-0001,
extendedKeyUsage clientAuth). Two calls make two unrelated CAs: the "wrong CA" case.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"
CLIENT_CN = "AZ-0001"
VALID_DAYS = "1"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    done = subprocess.run([OPENSSL, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _san(hostname: str) -> str:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return f"DNS:{hostname}"
    return f"IP:{hostname}"


def _new_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    path.chmod(0o600)


def _signed(d: Path, name: str, subject: str, extensions: str, ca_cert: Path, ca_key: Path) -> None:
    key, csr, cert, ext = (
        d / f"{name}.key",
        d / f"{name}.csr",
        d / f"{name}.crt",
        d / f"{name}.ext",
    )
    _new_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    ext.write_text(extensions + "\n", encoding="ascii")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", VALID_DAYS, "-sha256", "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip


def make_pki(dir: Path, hostname: str = "127.0.0.1") -> Pki:  # `dir`: the shared contract
    """Writes ca/server/client keys and certificates into `dir` (created if missing)."""
    dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_cert=dir / "ca.crt",
        ca_key=dir / "ca.key",
        server_cert=dir / "server.crt",
        server_key=dir / "server.key",
        client_cert=dir / "client.crt",
        client_key=dir / "client.key",
    )
    _new_key(pki.ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pki.ca_key), "-subj", f"/CN=test CA {dir.name}",
        "-days", VALID_DAYS, "-sha256", "-out", str(pki.ca_cert),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _signed(
        dir,
        "server",
        f"/CN={hostname}",
        f"subjectAltName={_san(hostname)}\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature",
        pki.ca_cert,
        pki.ca_key,
    )
    _signed(
        dir,
        "client",
        f"/CN={CLIENT_CN}",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature",
        pki.ca_cert,
        pki.ca_key,
    )
    return pki

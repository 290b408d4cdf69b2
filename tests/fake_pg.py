"""A fake PostgreSQL server, as an attacker would run one, and certificates for TLS tests.

It speaks just enough of the wire protocol to learn what a client sends it: it refuses or
accepts TLS (with any certificate it is given), then asks for the password in clear or as
md5, or lets the client in and never answers a query. Everything received after the
startup message is kept, so a test can show that a password never arrived.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


@dataclass
class Authority:
    """A CA, and server certificates it signs: all as PEM."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def new(cls, name: str = "cmek test CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, folder: Path, *names: str) -> tuple[Path, Path]:
        """A server certificate for ``names``: (certificate file, key file), key 0600."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in names]), critical=False)
                .sign(self.key, hashes.SHA256()))
        folder.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = folder / f"{names[0]}.crt", folder / f"{names[0]}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
        return cert_file, key_file


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


@dataclass
class FakePostgres:
    """``auth``: "cleartext", "md5" or "trust" (then every query hangs)."""

    auth: str = "cleartext"
    tls: ssl.SSLContext | None = None
    received: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def got(self, secret: str) -> bool:
        """Whether ``secret`` reached this server in any message after the startup."""
        return any(secret.encode() in data for data in self.received)

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._session(conn)
        except (OSError, ssl.SSLError, struct.error):
            return

    def _read(self, conn: socket.socket | ssl.SSLSocket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _session(self, raw: socket.socket) -> None:
        conn: socket.socket | ssl.SSLSocket = raw
        while True:  # negotiation: GSS and TLS requests, then the startup message
            length, code = struct.unpack("!II", self._read(conn, 8))
            if code == GSSENC_REQUEST:
                conn.sendall(b"N")
            elif code == SSL_REQUEST:
                if self.tls is None or isinstance(conn, ssl.SSLSocket):
                    conn.sendall(b"N")
                else:
                    conn.sendall(b"S")
                    conn = self.tls.wrap_socket(conn, server_side=True)
            else:
                self._read(conn, length - 8)  # the startup parameters
                break
        if self.auth == "cleartext":
            conn.sendall(_message(b"R", struct.pack("!I", 3)))
        elif self.auth == "md5":
            conn.sendall(_message(b"R", struct.pack("!I", 5) + b"salt"))
        else:
            conn.sendall(_message(b"R", struct.pack("!I", 0)))
            for key, value in (("server_version", "16.0"), ("client_encoding", "UTF8"),
                               ("standard_conforming_strings", "on"),
                               ("integer_datetimes", "on"), ("DateStyle", "ISO, MDY")):
                conn.sendall(_message(b"S", key.encode() + b"\0" + value.encode() + b"\0"))
            conn.sendall(_message(b"K", struct.pack("!II", 1, 2)))
            conn.sendall(_message(b"Z", b"I"))
        while True:  # whatever comes now is kept; nothing is ever answered
            kind = self._read(conn, 1)
            (length,) = struct.unpack("!I", self._read(conn, 4))
            self.received.append(kind + self._read(conn, length - 4))


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context

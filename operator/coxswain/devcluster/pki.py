"""Certificates and keys for the local control plane.

One CA signs everything: the API server's serving certificate, the client certificates
of the admin user and of the components, and (as the cluster-signing CA) CSRs approved in
the cluster. The service-account key pair is separate because the API server signs tokens
with it and kube-controller-manager signs the tokens of its controllers with the same key.

Keys are ECDSA P-256 except the service-account key: ECDSA keeps generation fast (a fresh
PKI on every `up` costs milliseconds), and RSA for tokens is what every client expects.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Names the API server answers to from inside a cluster, plus loopback for us.
SERVICE_IP = "10.0.0.1"
API_SERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
API_SERVER_IPS = ("127.0.0.1", SERVICE_IP)
VALIDITY = datetime.timedelta(days=365)

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterPKI:
    """Every file the components and clients need, all under one directory."""

    ca: CertPair
    apiserver: CertPair
    admin: CertPair
    controller_manager: CertPair
    scheduler: CertPair
    front_proxy_ca: CertPair
    front_proxy_client: CertPair
    service_account_key: Path
    service_account_pub: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    # Backdate a little: clocks of the components are the same machine's, but a
    # certificate valid "from now" fails a check made in the same second on some paths.
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _make_ca(
    directory: Path, stem: str = "ca", common_name: str = "coxswain-dev-ca"
) -> tuple[CertPair, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = _name(common_name)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(pair.key, _key_pem(key), private=True)
    return pair, key, cert


def _issue(
    directory: Path,
    stem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    organization: str | None = None,
    server: bool = False,
    extra_ips: tuple[str, ...] = (),
    dns_names: tuple[str, ...] = API_SERVER_NAMES,
) -> CertPair:
    key = _new_key()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        _builder(_name(common_name, organization), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (*API_SERVER_IPS, *extra_ips)]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    _write(pair.key, _key_pem(key), private=True)
    return pair


def pki_layout(directory: Path) -> ClusterPKI:
    """Where `create_pki` writes each file (for reading them back without regenerating)."""

    def pair(stem: str) -> CertPair:
        return CertPair(directory / f"{stem}.crt", directory / f"{stem}.key")

    return ClusterPKI(
        ca=pair("ca"),
        apiserver=pair("apiserver"),
        admin=pair("admin"),
        controller_manager=pair("kube-controller-manager"),
        scheduler=pair("kube-scheduler"),
        front_proxy_ca=pair("front-proxy-ca"),
        front_proxy_client=pair("front-proxy-client"),
        service_account_key=directory / "sa.key",
        service_account_pub=directory / "sa.pub",
    )


def create_pki(directory: Path, apiserver_ips: tuple[str, ...] = ()) -> ClusterPKI:
    """Write a fresh CA, serving and client certificates and the service-account keys.

    `apiserver_ips` are addresses beyond loopback that the API server's certificate must
    name: the real nodes' gateway, where pods and kubelets reach it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_cert = _make_ca(directory)
    # A CA of its own for the aggregation layer's front proxy, as kubeadm does: a client
    # certificate from it lets the bearer assert any user in request headers.
    proxy_ca, proxy_ca_key, proxy_ca_cert = _make_ca(
        directory, "front-proxy-ca", "coxswain-dev-front-proxy-ca"
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_private = directory / "sa.key"
    sa_public = directory / "sa.pub"
    _write(sa_private, _key_pem(sa_key), private=True)
    _write(
        sa_public,
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return ClusterPKI(
        ca=ca,
        apiserver=_issue(
            directory, "apiserver", ca_key, ca_cert, "kube-apiserver", server=True, extra_ips=apiserver_ips
        ),
        # O=system:masters is bound to cluster-admin by the API server's bootstrap policy.
        admin=_issue(directory, "admin", ca_key, ca_cert, "coxswain-admin", "system:masters"),
        # The bootstrap policy grants these exact user names what the components need.
        controller_manager=_issue(
            directory, "kube-controller-manager", ca_key, ca_cert, "system:kube-controller-manager"
        ),
        scheduler=_issue(directory, "kube-scheduler", ca_key, ca_cert, "system:kube-scheduler"),
        front_proxy_ca=proxy_ca,
        front_proxy_client=_issue(
            directory, "front-proxy-client", proxy_ca_key, proxy_ca_cert, "front-proxy-client"
        ),
        service_account_key=sa_private,
        service_account_pub=sa_public,
    )


def issue_from_ca(
    ca: CertPair,
    directory: Path,
    stem: str,
    common_name: str,
    organization: str | None = None,
    server_ips: tuple[str, ...] = (),
) -> CertPair:
    """A certificate signed by the CA in `ca` (read back from disk): a client certificate,
    or a serving one for `server_ips` when given (a kubelet's, for its node address)."""
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key} is not an ECDSA key")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    directory.mkdir(parents=True, exist_ok=True)
    if not server_ips:
        return _issue(directory, stem, ca_key, ca_cert, common_name, organization)
    return _issue(
        directory, stem, ca_key, ca_cert, common_name, organization, server=True,
        extra_ips=server_ips, dns_names=(common_name.rsplit(":", 1)[-1],),
    )  # fmt: skip

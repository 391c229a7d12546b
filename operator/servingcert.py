"""The webhook's TLS in the chart's own mode: a CA the operator keeps in a Secret, a serving
certificate issued from it, and the webhook configuration's caBundle set to that CA.

Helm cannot keep a CA across renders (`genCA` makes a new one each time, and `lookup` sees
nothing under `helm template`, so every GitOps sync changed the caBundle and restarted the
operator). So the chart renders no key material: the first replica makes the CA (10 years) and
a serving certificate (1 year) and stores them in the Secret; every replica reads them from
there, writes the pair for kopf's server into its own /tmp, and re-issues the serving
certificate from the same CA when it has less than 30 days left, so the caBundle changes only
if the CA itself is replaced. Two replicas racing to create the Secret: one create wins (409
for the other, which then reads the winner's).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
from pathlib import Path

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_DAYS = 30


@dataclasses.dataclass(frozen=True)
class Material:
    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    def as_secret_data(self) -> dict[str, str]:
        raw = {"ca.crt": self.ca_cert, "ca.key": self.ca_key, "tls.crt": self.cert, "tls.key": self.key}
        return {k: base64.b64encode(v).decode() for k, v in raw.items()}

    @classmethod
    def from_secret_data(cls, data: dict[str, str] | None) -> "Material | None":
        data = data or {}
        if not {"ca.crt", "ca.key"} <= set(data):
            return None
        got = {k: base64.b64decode(data.get(k) or "") for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
        return cls(got["ca.crt"], got["ca.key"], got["tls.crt"], got["tls.key"])


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(name: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue(ca_cert: bytes, ca_key: bytes, hosts: list[str], now: datetime.datetime) -> tuple[bytes, bytes]:
    """A serving certificate for `hosts` (DNS names or IP addresses), signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    key = _key()
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
            .sign(signer, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def needs_leaf(material: Material, hosts: list[str], now: datetime.datetime) -> bool:
    """No serving certificate, one near its end, or one not for these hosts (a renamed Service)."""
    from cryptography import x509

    if not material.cert or not material.key:
        return True
    try:
        cert = x509.load_pem_x509_certificate(material.cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return True
    named = {str(n) for n in sans.get_values_for_type(x509.DNSName)} | \
        {str(n) for n in sans.get_values_for_type(x509.IPAddress)}
    return cert.not_valid_after_utc - now < datetime.timedelta(days=RENEW_DAYS) or not set(hosts) <= named


@dataclasses.dataclass
class Keeper:
    """Reads, makes or renews the Material in the Secret; writes the pair kopf serves."""

    core: object
    """A kubernetes.client.CoreV1Api."""
    namespace: str
    secret: str
    hosts: list[str]
    certfile: Path
    keyfile: Path

    def ensure(self, now: datetime.datetime | None = None) -> Material:
        import kubernetes

        now = now or datetime.datetime.now(datetime.timezone.utc)
        for _ in range(3):  # a lost race re-reads the winner's Secret
            try:
                found = self.core.read_namespaced_secret(self.secret, self.namespace, _request_timeout=10)
            except kubernetes.client.ApiException as err:
                if err.status != 404:
                    raise
                found = None
            material = Material.from_secret_data(found.data if found else None)
            if material is None:
                ca_cert, ca_key = new_ca(f"{self.hosts[0]} webhook CA", now)
                material = Material(ca_cert, ca_key, *issue(ca_cert, ca_key, self.hosts, now))
            elif needs_leaf(material, self.hosts, now):
                material = dataclasses.replace(material, **dict(zip(
                    ("cert", "key"), issue(material.ca_cert, material.ca_key, self.hosts, now))))
            else:
                self._write_files(material)
                return material
            body = kubernetes.client.V1Secret(
                type=found.type if found else "Opaque", data=material.as_secret_data(),  # type is immutable
                metadata=kubernetes.client.V1ObjectMeta(
                    name=self.secret, namespace=self.namespace,
                    resource_version=found.metadata.resource_version if found else None,
                    labels={"app.kubernetes.io/name": "runsync", "app.kubernetes.io/component": "webhook-tls"}))
            try:
                if found is None:
                    self.core.create_namespaced_secret(self.namespace, body, _request_timeout=10)
                else:
                    self.core.replace_namespaced_secret(self.secret, self.namespace, body, _request_timeout=10)
            except kubernetes.client.ApiException as err:
                if err.status == 409:
                    continue
                raise
            self._write_files(material)
            return material
        raise RuntimeError(f"Secret {self.namespace}/{self.secret}: three writes lost to other replicas")

    def _write_files(self, material: Material) -> None:
        # Key first, then the certificate, each replaced whole; only when they change (once a
        # year). tlsserver loads the pair only once the two match.
        for path, data in ((self.keyfile, material.key), (self.certfile, material.cert)):
            if path.exists() and path.read_bytes() == data:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.chmod(0o600)
            tmp.replace(path)


def set_ca_bundle(admission, config: str, ca_cert: bytes) -> bool:
    """Point every webhook of the MutatingWebhookConfiguration at the CA; True when it changed."""
    wanted = base64.b64encode(ca_cert).decode()
    current = admission.read_mutating_webhook_configuration(config, _request_timeout=10)
    hooks = current.webhooks or []
    if all(h.client_config.ca_bundle == wanted for h in hooks):
        return False
    ops = []  # a JSON patch: a merge patch would replace the whole list of webhooks
    for i, h in enumerate(hooks):
        ops += [{"op": "test", "path": f"/webhooks/{i}/name", "value": h.name},
                {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": wanted}]
    admission.patch_mutating_webhook_configuration(config, ops, _request_timeout=10)
    return True

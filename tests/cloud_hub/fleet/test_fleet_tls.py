"""TLS for the fleet: the hub's CA, the broker's certificate, agents and the hub verifying the
broker, registration handing a TLS device the CA, and the hub's API over HTTPS."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.core.settings import HubSettings
from cloud_hub.fleet.broker_auth import BrokerFiles, hub_password
from cloud_hub.fleet.mqtt_service import build_client
from cloud_hub.fleet.schemas import DeviceCreate
from cloud_hub.fleet.tls import (
    CertificateAuthority,
    TlsFiles,
    ensure_server_certificate,
    issue_server_certificate,
    load_certificate,
    sign_device_certificate,
)
from cloud_hub.hub import Hub
from cloud_hub.registry.signing import HubSigner
from edge_agent.config import ConfigError, MqttSettings, load_settings
from edge_agent.core.mqtt import tls_context
from edge_agent.core.wire import DeviceStatus
from edge_agent.mqtt_link import MqttLink
from tests.conftest import BIN, REPO, SecureMosquitto, free_port, run_cli, wait_for_port
from tests.waiting import wait_until


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in ext}


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_fleet_ca_issues_the_brokers_certificate_and_is_kept(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "mosquitto")
    assert ensure_server_certificate(files, ["broker.lan", "10.0.0.5", "localhost"])
    assert _mode(files.ca_key) == 0o600 and _mode(files.server_key) == 0o600
    ca = load_certificate(files.ca_cert)
    server = load_certificate(files.server_cert)
    server.verify_directly_issued_by(ca)
    assert _sans(server) == {"broker.lan", "10.0.0.5", "localhost"}
    assert _eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    ca_bytes, server_bytes = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    assert not ensure_server_certificate(files, ["broker.lan", "10.0.0.5", "localhost"])
    assert files.server_cert.read_bytes() == server_bytes  # nothing changed, nothing issued

    assert ensure_server_certificate(files, ["broker.example", "127.0.0.1"])  # names changed
    assert files.ca_cert.read_bytes() == ca_bytes  # the CA devices trust stays
    renewed = load_certificate(files.server_cert)
    renewed.verify_directly_issued_by(ca)
    assert _sans(renewed) == {"broker.example", "127.0.0.1"}

    # signed by another CA (a copied file, a new CA): issued again by this one
    other = CertificateAuthority.create("someone else")
    issue_server_certificate(
        other, ["broker.example", "127.0.0.1"], files.server_key, files.server_cert
    )
    assert ensure_server_certificate(files, ["broker.example", "127.0.0.1"])
    load_certificate(files.server_cert).verify_directly_issued_by(ca)


def test_the_ca_signs_a_devices_public_key_or_csr_with_its_id(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path)
    ensure_server_certificate(files, ["localhost"])
    ca = load_certificate(files.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())  # made on the device, never sent
    from_key = x509.load_pem_x509_certificate(
        sign_device_certificate(files, "cam-1", key.public_key()).encode()
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgepilot-hub")]))
        .sign(key, hashes.SHA256())
    )
    from_csr = x509.load_pem_x509_certificate(sign_device_certificate(files, "cam-1", csr).encode())
    for cert in (from_key, from_csr):
        cert.verify_directly_issued_by(ca)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert [a.value for a in cn] == ["cam-1"]  # the CSR's own subject is not taken
        assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert cert.public_key() == key.public_key()


def _register(data_dir: Path, device_id: str) -> str:
    hub = Hub.open(HubSettings(data_dir=data_dir, run_scheduler=False))
    try:
        return hub.fleet.devices.register(DeviceCreate(id=device_id)).password
    finally:
        hub.close()


def test_agents_and_the_hub_check_the_brokers_certificate_and_name(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    password = _register(data_dir, "cam-1")
    broker = SecureMosquitto(data_dir, tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    broker.configure()
    files = BrokerFiles.in_data_dir(data_dir)
    assert ensure_server_certificate(files.tls, ["localhost"])  # this name only
    broker.start()
    try:
        status = lambda state: DeviceStatus(device_id="cam-1", state=state)  # noqa: E731
        settings = MqttSettings(
            host="localhost",
            port=broker.port,
            username="cam-1",
            password=password,
            tls=True,
            ca_file=broker.ca_file,
        )
        link = MqttLink("cam-1", settings, status)
        link.start()
        try:
            wait_until(link.connected.is_set, 10, "the agent's TLS connection")
        finally:
            link.stop()

        def dial(host: str, ctx: ssl.SSLContext) -> None:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe")
            client.username_pw_set("cam-1", password)
            client.tls_set_context(ctx)
            client.connect(host, broker.port)  # the handshake fails: nothing to close

        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            dial("127.0.0.1", tls_context(broker.ca_file))  # not a name on the certificate
        with pytest.raises(ssl.SSLCertVerificationError):
            dial("localhost", tls_context(ca_pem=CertificateAuthority.create().pem))
        with pytest.raises(ssl.SSLCertVerificationError):
            dial("localhost", tls_context())  # the system's CAs do not know the fleet's

        hub_settings = HubSettings(
            data_dir=data_dir, mqtt_host="localhost", mqtt_port=broker.port, mqtt_tls=True
        )
        client = build_client(hub_settings)  # the fleet CA of the data dir, found by itself
        connected: list[bool] = []
        client.on_connect = lambda c, u, f, rc, p: connected.append(not rc.is_failure)
        client.connect("localhost", broker.port)
        client.loop_start()
        try:
            wait_until(lambda: connected == [True], 10, "the hub's TLS connection")
        finally:
            client.disconnect()
            client.loop_stop()
        assert hub_password(files)  # the hub's own account
    finally:
        broker.stop()


def test_registration_writes_a_tls_device_the_fleet_ca(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEPILOT_DATA_DIR": str(tmp_path / "hub"), "COLUMNS": "200"}
    port = free_port()
    conf = run_cli(
        ["hub", "broker-config", "--tls", "--tls-listen", f"127.0.0.1:{port}", "-o", "/dev/null"],
        env,
    )
    assert conf.returncode == 0, conf.stderr
    agent_toml = tmp_path / "agent.toml"
    reg = run_cli(
        [
            "devices",
            "register",
            "cam-1",
            "--broker",
            f"localhost:{port}",
            "--broker-tls",
            "--write-config",
            str(agent_toml),
        ],
        env,
    )
    assert reg.returncode == 0, reg.stderr
    assert _mode(agent_toml) == 0o600
    settings = load_settings(agent_toml)
    ca = (tmp_path / "hub" / "mosquitto" / "ca.crt").read_text()
    assert settings.mqtt.tls and settings.mqtt.ca_pem is not None
    assert settings.mqtt.ca_pem.strip() == ca.strip()
    assert (settings.mqtt.host, settings.mqtt.port) == ("localhost", port)

    # In-process, a hub whose devices use TLS hands out the CA the same way.
    hub = Hub.open(HubSettings(data_dir=tmp_path / "hub", run_scheduler=False, mqtt_tls=True))
    try:
        info = hub.fleet.devices.register(DeviceCreate(id="cam-2")).broker
        assert info.tls and info.ca_pem is not None and info.ca_pem.strip() == ca.strip()
        plain = Hub.open(HubSettings(data_dir=tmp_path / "plain", run_scheduler=False))
        try:
            assert not plain.fleet.devices.register(DeviceCreate(id="cam-3")).broker.tls
        finally:
            plain.close()
    finally:
        hub.close()


def test_the_agent_config_checks_its_tls_keys(tmp_path: Path, signer: HubSigner) -> None:
    def write(mqtt_lines: str) -> Path:
        path = tmp_path / "agent.toml"
        path.write_text(
            f'device_id = "pi-01"\ndata_dir = "d"\nhub_public_key = "{signer.public_key_b64}"\n'
            f'[mqtt]\npassword = "s3cret-value"\n{mqtt_lines}\n'
        )
        return path

    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.crt").write_text(CertificateAuthority.create().pem)
    settings = load_settings(write('tls = true\nca_file = "certs/ca.crt"'))
    assert settings.mqtt.ca_file == tmp_path / "certs" / "ca.crt"  # relative to the file
    with pytest.raises(ConfigError, match="tls is false") as no_tls:
        load_settings(write('ca_file = "certs/ca.crt"'))
    assert "s3cret-value" not in str(no_tls.value)  # the [mqtt] table is never echoed
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(write('tls = true\nca_file = "certs/missing.crt"'))
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        load_settings(write('tls = true\nca_pem = "hello"'))


@pytest.fixture
def signer(tmp_path: Path) -> HubSigner:
    return HubSigner.load_or_create(tmp_path / "signing-key.pem")


def test_hub_serve_answers_over_https_verified_against_the_ca(tmp_path: Path) -> None:
    files = TlsFiles(tmp_path / "certs")
    ca = CertificateAuthority.load_or_create(files)
    cert, key = tmp_path / "certs" / "hub.crt", tmp_path / "certs" / "hub.key"
    issue_server_certificate(ca, ["127.0.0.1", "localhost"], key, cert)
    port = free_port()
    env = {**os.environ, "EDGEPILOT_DATA_DIR": str(tmp_path / "hub")}
    cmd = [str(BIN / "edgepilot"), "hub", "serve", "--port", str(port), "--no-scheduler"]
    cmd += ["--workers", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, timeout=60, proc=proc)
        url = f"https://127.0.0.1:{port}/api/v1/health"
        ctx = ssl.create_default_context(cafile=str(files.ca_cert))
        with urllib.request.urlopen(url, context=ctx, timeout=10) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=10)
    finally:
        proc.terminate()
        proc.wait(20)
    half = run_cli(["hub", "serve", "--tls-cert", str(cert)], env)
    assert half.returncode == 2 and "go together" in half.stderr

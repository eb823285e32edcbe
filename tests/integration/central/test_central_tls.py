"""TLS on the central broker: central instances and the regions' bridges verify it, and one
that trusts another CA never gets in (real Mosquitto brokers, the real central process).

That the whole overflow path works over TLS is proven by test_central_service.py,
test_bridge.py and test_regions.py, which run over TLS.
"""
from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from harness.broker import Broker, free_port, make_tls, run_as_me
from harness.central import CentralBroker, CentralProcess
from harness.clients import connect_client, try_connect
from recarga.core import broker_config
from recarga.core.bridge import BridgeSettings, bridge_user
from recarga.core.broker_dir import LOG_NAME
from recarga.core.protocol import central as PC

pytestmark = pytest.mark.integration

REGIONS = ("a",)


@pytest.fixture
def central(tmp_path: Path):
    with CentralBroker.launch(tmp_path / "central", regions=REGIONS, tls=True) as broker:
        yield broker


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    return Path(make_tls(tmp_path / "other").cafile)


def test_central_broker_refuses_plain_clients_and_another_ca(central: Broker, other_ca: Path):
    user = bridge_user("a")
    assert try_connect(central, user, central.password(user)) == 0
    with pytest.raises(ConnectionResetError):
        try_connect(central, user, central.password(user), tls=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        try_connect(central, user, central.password(user), ca_file=other_ca)


def test_central_instance_that_trusts_another_ca_does_not_connect_and_says_so(central: Broker, other_ca: Path,
                                                                             tmp_path: Path):
    good = CentralProcess(tmp_path / "good", central, {"a": 1})
    with good:
        good.wait_log("subscribed: serving overflow", 15)  # control: the broker's own CA
    bad = CentralProcess(tmp_path / "bad", central, {"a": 1}, instance="c2")
    bad.config.write_text(bad.config.read_text().replace(str(central.ca_file), str(other_ca)))
    with bad:
        bad.wait_log(f"cannot connect to broker 127.0.0.1:{central.port} (TLS, CA {other_ca})", 15)
        bad.alive()
        assert "connected to" not in bad.log_text()


def test_bridge_that_trusts_another_ca_never_links(central: Broker, other_ca: Path, tmp_path: Path):
    """The region broker's bridge checks central's certificate: with another CA the link stays
    down, and central's broker never sees the bridge user log in."""
    user = bridge_user("a")
    users = {"gateway": "gw-secret"}
    port = free_port()
    bridge = BridgeSettings(central.host, central.port, central.password(user), restart_min_s=1,
                            restart_max_s=1, cafile=other_ca)
    conf = broker_config.write_broker_dir(tmp_path / "a", "a", port, users, [], [], "gateway", run_as=run_as_me(),
                                          bridge=bridge)
    with Broker(conf, "127.0.0.1", port, region="a", passwords=users,
                log_path=conf.parent / LOG_NAME) as region:
        gw = connect_client(region, "gateway")
        try:
            gw.subscribe(PC.central_topic("a", PC.LINK_LEAF))
            # several attempts (restart_timeout 1 s), each refused by the bridge's own check
            region.wait_log("certificate verify failed", 10, count=2)
            assert b"1" not in [m.payload for m in gw.messages(PC.central_topic("a", PC.LINK_LEAF))]
        finally:
            gw.close()
    assert f"as {user}" not in central.log_text()

"""recarga.core.broker_config and recarga.core.central_broker: client ids bound to user names
on both brokers, one broker user per central instance, and shared subscriptions kept to
central's instances."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recarga.central import config as CC
from recarga.core import broker_config as bc
from recarga.core import broker_dir, central_broker


def test_both_brokers_use_user_names_as_client_ids():
    for template in (bc.TEMPLATE, central_broker.CENTRAL_TEMPLATE):
        lines = [ln.strip() for ln in template.read_text().splitlines()]
        assert "use_username_as_clientid true" in lines, template


def test_each_central_instance_has_a_user_of_its_own(tmp_path: Path):
    assert central_broker.central_user("c1") == "central-c1"
    with pytest.raises(ValueError):
        central_broker.central_user("c/1")
    toml = tmp_path / "central.toml"
    toml.write_text('instance = "c2"\ndatabase = "c.db"\n[broker]\npassword = "x"\n'
                    '[regions.a]\nbroker_host = "127.0.0.1"\n')
    assert CC.load(toml).broker.username == "central-c2"  # the default follows the instance


def test_the_share_guard_refuses_shared_subscriptions_to_everyone_but_central():
    guard = json.loads(central_broker.render_share_guard(["bridge-a", "monitor"]))
    assert guard["defaultACLAccess"] == dict.fromkeys(
        ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe"), False)  # grants nothing
    assert [c["username"] for c in guard["clients"]] == ["bridge-a", "monitor"]
    assert all("password" not in c for c in guard["clients"])  # passwords stay in the password file
    [role] = guard["roles"]
    assert role["acls"] == [{"acltype": "subscribePattern", "topic": "$share/#", "priority": 0, "allow": False}]
    assert all(c["roles"] == [{"rolename": role["rolename"]}] for c in guard["clients"])


def test_central_broker_dir_loads_the_guard_for_bridges_and_extra_users(tmp_path: Path):
    users = {"central-c1": "p1", "central-c2": "p2", "bridge-a": "p3", "monitor": "p4"}
    conf = central_broker.write_central_broker_dir(tmp_path, 1883, users, ["central-c1", "central-c2"], ["a"],
                                                   run_as="root",
                                                   extra_acl={"monitor": [("read", "recarga/v1/+/central/#")]})
    lines = conf.read_text().splitlines()
    assert f"plugin {central_broker.dynsec_plugin()}" in lines
    assert f"plugin_opt_config_file {tmp_path.resolve() / broker_dir.SHARE_GUARD_NAME}" in lines
    guard = json.loads((tmp_path / broker_dir.SHARE_GUARD_NAME).read_text())
    assert sorted(c["username"] for c in guard["clients"]) == ["bridge-a", "monitor"]
    with pytest.raises(broker_dir.BrokerConfigError, match="list of user names"):
        central_broker.write_central_broker_dir(tmp_path, 1883, users, "central-c1", ["a"], run_as="root")


def test_gateway_config_refuses_a_client_id(tmp_path: Path):
    from recarga.core.config_file import ConfigError
    from recarga.gateway import config as GC

    toml = tmp_path / "gateway.toml"
    toml.write_text('region = "test"\ndatabase = "g.db"\n[broker]\npassword = "x"\nclient_id = "gw-1"\n')
    with pytest.raises(ConfigError, match="client_id: remove it"):
        GC.load(toml)

"""[[opcua]] sources in a scenario: what a valid one reads as, and errors that name the
file, line and field."""

from __future__ import annotations

import pytest

from scenarios.loader import ScenarioError, load_scenario_text

BASE = """\
[site]
id = "S1"

[[buildings]]
id = "B01"
floors = 1
rooms_per_floor = 1
electric = {}
water = { valve = true }
master = { electric = true }

[[opcua]]
twin = "B01.mm"
url = "opc.tcp://10.0.3.20:4840"
nodes = { energy_kwh = "ns=2;s=Meter7.Energy", relay_closed = "ns=3;i=1002" }

[opcua.methods]
relay_open = ["ns=2;s=Meter7", "ns=2;s=Meter7.Trip"]
"""


def test_a_valid_source_reads_as_written():
    """Twin, url, the field-to-node map and the action-to-method map come through as given."""
    (source,) = load_scenario_text(BASE, "s1.toml").opcua
    assert source.twin == "B01.mm" and source.url == "opc.tcp://10.0.3.20:4840"
    assert source.nodes == {"energy_kwh": "ns=2;s=Meter7.Energy", "relay_closed": "ns=3;i=1002"}
    assert source.methods == {"relay_open": ("ns=2;s=Meter7", "ns=2;s=Meter7.Trip")}
    assert (source.security, source.username, source.password_env) == ("none", None, None)
    secured = load_scenario_text(BASE.replace('url = "opc.tcp://10.0.3.20:4840"', 'url = "opc.tcp://10.0.3.20:4840"\n'
                                              'security = "sign_encrypt"\nusername = "gw"\npassword_env = "GW_PW"'))
    assert (secured.opcua[0].security, secured.opcua[0].username, secured.opcua[0].password_env) == (
        "sign_encrypt", "gw", "GW_PW")


@pytest.mark.parametrize(("old", "new", "where", "says"), [
    ('twin = "B01.mm"', 'twin = "B09.mm"', "s1.toml:13: opcua[0].twin", "no twin 'B09.mm'"),
    ('url = "opc.tcp://10.0.3.20:4840"', 'url = "http://10.0.3.20"', "s1.toml:14: opcua[0].url", "opc.tcp://HOST:PORT"),
    ("energy_kwh = ", "volume_m3 = ", "s1.toml:15: opcua[0].nodes.volume_m3", "report no 'volume_m3'"),
    ("ns=3;i=1002", "Meter7.Relay", "s1.toml:15: opcua[0].nodes.relay_closed", "not a node id"),
    ('relay_open = ["ns=2;s=Meter7", "ns=2;s=Meter7.Trip"]', 'valve_close = ["ns=2;s=V", "ns=2;s=V.Close"]',
     "s1.toml:18: opcua[0].methods", "valve_close"),
    ('relay_open = ["ns=2;s=Meter7", "ns=2;s=Meter7.Trip"]', 'relay_open = "ns=2;s=Meter7.Trip"',
     "s1.toml:18: opcua[0].methods.relay_open", "[object node id, method node id]"),
    ('url = "opc.tcp://10.0.3.20:4840"', 'url = "opc.tcp://10.0.3.20:4840"\nsecurity = "tls"',
     "s1.toml:15: opcua[0].security", "'none' or 'sign_encrypt'"),
    ('url = "opc.tcp://10.0.3.20:4840"', 'url = "opc.tcp://10.0.3.20:4840"\nusername = "gw"',
     "s1.toml:12: opcua[0].password_env", "together"),
])
def test_errors_name_line_and_field(old, new, where, says):
    """Each fault is refused with the file, the line and the field it is on."""
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(BASE.replace(old, new), "s1.toml")
    assert str(caught.value).startswith(where) and says in str(caught.value), str(caught.value)

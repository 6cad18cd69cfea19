"""import-zimbra: a zmprov / carbonio dump becomes a mailguard.toml that passes check-config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mailguard.config import loads
from mailguard.zimbra import ImportFailed, import_text, parse_dump

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SAMPLE = Path(__file__).resolve().parent / "data" / "zmprov-gacf.txt"


@pytest.fixture(scope="module")
def translated() -> str:
    return import_text(SAMPLE.read_text(encoding="utf-8"), "zmprov-gacf.txt")


def test_sample_translates_to_a_valid_config(translated: str) -> None:
    config = loads(translated, source="imported.toml", env={})  # check-config's own check
    assert config.enabled == ("dos", "device", "login")
    assert config.store.type == "memory"


def test_values_are_converted(translated: str) -> None:
    data = tomllib.loads(translated)
    assert data["dos"]["max_requests_per_sec"] == 40
    assert data["dos"]["delay_ms"] == -1
    # Zimbra suspends on the failure after MaxFailedLogin (8): mailguard blocks on the 9th
    assert data["login"]["max_failed_logins"] == 9
    assert data["login"]["block_duration"] == 20 * 60  # minutes -> seconds
    assert data["device"] == {
        "enabled": True,
        "max_requests": 120,
        "time_window": 45,  # 45000 ms
        "jail_duration": 900,  # 900000 ms
    }


def test_multi_valued_safe_ips_are_all_kept_with_loopback(translated: str) -> None:
    safe = tomllib.loads(translated)["common"]["safe_ips"]
    assert safe == [
        "127.0.0.1",
        "::1",
        "10.1.2.3/32",
        "192.168.4.0/24",
        "2001:db8:100::/48",
        "198.51.100.7",  # one value holding a comma-separated list
        "198.51.100.8",
    ]


def test_attributes_without_equivalent_are_commented(translated: str) -> None:
    comments = [line for line in translated.splitlines() if line.startswith("#")]
    text = "\n".join(comments)
    for name in (
        "zimbraInvalidLoginFilterReinstateIpTaskIntervalInMin: 5",
        "zimbraInvalidLoginFilterMaxSizeOfFailedIpDb: 7000",
        "zimbraThrottleWhitelist: 10.9.8.7",
        "zimbraReverseProxyIPLoginLimit: 0",
    ):
        assert f"# {name}" in text, name
    assert "max_keys" in text  # the size of the failed-IP table maps to nothing but max_keys
    # trusted IPs are offered, commented out
    assert '# trusted_proxies = ["10.0.0.10", "10.0.0.11"]' in translated
    assert "trusted_proxies" not in tomllib.loads(translated)["common"]
    # unrelated attributes are counted, not listed
    assert "zimbraMtaMyNetworks" not in translated
    assert "other attribute(s)" in translated


def test_unknown_attribute_of_a_known_family_gets_a_comment() -> None:
    text = import_text("zimbraHttpDosFilterMaxRequestsPerSec: 30\nzimbraHttpDosFilterFoo: 7\n")
    assert "# zimbraHttpDosFilterFoo: 7" in text
    assert "not known to mailguard" in text
    loads(text, env={})


def test_missing_attributes_get_zimbra_defaults_and_device_stays_off() -> None:
    text = import_text("zimbraHttpThrottleSafeIPs: 10.0.0.0/8\n")
    data = tomllib.loads(text)
    assert data["dos"]["max_requests_per_sec"] == 30
    assert data["dos"]["delay_ms"] == -1
    assert data["login"]["max_failed_logins"] == 11
    assert data["login"]["block_duration"] == 900
    assert data["device"]["enabled"] is False
    assert data["common"]["safe_ips"] == ["127.0.0.1", "::1", "10.0.0.0/8"]
    assert loads(text, env={}).enabled == ("dos", "login")


def test_zero_turns_filters_off_and_zero_delay_is_flagged() -> None:
    text = import_text(
        "zimbraInvalidLoginFilterMaxFailedLogin: 0\n"
        "zimbraHttpDosFilterDelayMillis: 0\n"
        "mobileAntiDosServiceEnabled: TRUE\n"
        "mobileAntiDosServiceMaxRequests: 0\n"
    )
    data = tomllib.loads(text)
    assert data["login"]["enabled"] is False
    assert data["device"]["enabled"] is False
    assert data["dos"]["delay_ms"] == 0
    assert "CAUTION" in text
    assert loads(text, env={}).enabled == ("dos",)


def test_bad_values_fall_back_and_say_so() -> None:
    text = import_text(
        "zimbraHttpDosFilterMaxRequestsPerSec: lots\n"
        "zimbraHttpThrottleSafeIPs: mail.example.com\n"
        "zimbraHttpThrottleSafeIPs: 192.168.1.5/24\n"
        "mobileAntiDosServiceTimeWindow: 1500\n"
    )
    data = tomllib.loads(text)
    assert data["dos"]["max_requests_per_sec"] == 30
    assert "lots is not a whole number" in text
    assert data["common"]["safe_ips"] == ["127.0.0.1", "::1", "192.168.1.0/24"]
    assert "'mail.example.com' left out" in text
    assert "written as the network '192.168.1.0/24'" in text
    assert data["device"]["time_window"] == 1.5
    loads(text, env={})


def test_carbonio_spellings_case_and_formats() -> None:
    dump = parse_dump(
        "# name mail.example.com\n"
        "CarbonioHttpDosFilterMaxRequestsPerSec: 55\n"
        "ZIMBRAHTTPDOSFILTERDELAYMILLIS = 250\n"
        "  mobileAntiDosServiceEnabled     true\n"
        "Some banner line that is not an attribute\n"
    )
    assert dump.get("zimbrahttpdosfiltermaxrequestspersec") is not None
    assert dump.skipped_lines == 1
    assert dump.attributes["zimbrahttpdosfilterdelaymillis"].value == "250"
    assert dump.attributes["mobileantidosserviceenabled"].value == "true"
    data = tomllib.loads(import_text("CarbonioHttpDosFilterMaxRequestsPerSec: 55\n"))
    assert data["dos"]["max_requests_per_sec"] == 55
    text = import_text(
        "ZIMBRAHTTPDOSFILTERDELAYMILLIS = 250\n  mobileAntiDosServiceEnabled     true\n"
    )
    data = tomllib.loads(text)
    assert data["dos"]["delay_ms"] == 250
    assert data["device"]["enabled"] is True


def test_json_dump() -> None:
    text = import_text(
        '{"zimbraHttpDosFilterMaxRequestsPerSec": 25,'
        ' "zimbraHttpThrottleSafeIPs": ["10.1.0.0/16", "10.2.0.0/16"],'
        ' "mobileAntiDosServiceEnabled": true}'
    )
    data = tomllib.loads(text)
    assert data["dos"]["max_requests_per_sec"] == 25
    assert data["common"]["safe_ips"][2:] == ["10.1.0.0/16", "10.2.0.0/16"]
    assert data["device"]["enabled"] is True


def test_later_value_wins_as_with_zmprov_gs_after_gacf() -> None:
    text = import_text(
        "zimbraHttpDosFilterMaxRequestsPerSec: 30\nzimbraHttpDosFilterMaxRequestsPerSec: 80\n"
    )
    assert tomllib.loads(text)["dos"]["max_requests_per_sec"] == 80


def test_nothing_relevant_is_an_error() -> None:
    with pytest.raises(ImportFailed, match="no Zimbra/Carbonio"):
        import_text("zimbraMtaMyNetworks: 127.0.0.0/8\n")
    with pytest.raises(ImportFailed, match="JSON"):
        import_text("{not json")


def test_values_cannot_break_out_of_comments() -> None:
    text = import_text(
        "zimbraHttpDosFilterMaxRequestsPerSec: 30\n"
        'zimbraHttpDosFilterBogus: x\x1b[dos]\x1bmax_requests_per_sec = 1 "\\\n'
    )
    data = tomllib.loads(text)  # still valid TOML, one [dos] table
    assert data["dos"]["max_requests_per_sec"] == 30
    [line] = [line for line in text.splitlines() if "Bogus" in line]
    assert line.startswith("# zimbraHttpDosFilterBogus: x?[dos]?")


def test_a_delay_longer_than_mailguard_holds_is_capped_with_a_comment() -> None:
    text = import_text("zimbraHttpDosFilterDelayMillis: 600000\n")
    assert "delay_ms = 60000" in text and "capped at 60000 ms" in text
    loads(text)  # a valid configuration

import subprocess
import sys

import pytest

from miresga.control.config import DEFAULT_CONFIG, ConfigError, demo_secrets, load_config, parse_config


def test_default_config_is_valid():
    cfg = load_config()
    assert len(cfg.hosts.clients) == 1 and len(cfg.hosts.frontends) == 2 and len(cfg.hosts.backends) == 3


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "miresga.control.cli", *args], capture_output=True, text=True)


def test_check_config_names_misspelled_key(tmp_path):
    bad = DEFAULT_CONFIG.read_text().replace("window_scale: 7", "windw_scale: 7")
    f = tmp_path / "bad.yaml"
    f.write_text(bad)
    p = _cli("check-config", str(f))
    assert p.returncode != 0
    assert "switch.windw_scale" in p.stderr and "unknown key" in p.stderr
    line = bad.splitlines().index(next(l for l in bad.splitlines() if "windw_scale" in l)) + 1
    assert f"bad.yaml:{line}" in p.stderr


def test_check_config_accepts_default_and_prints_it():
    assert _cli("check-config", str(DEFAULT_CONFIG)).returncode == 0
    out = _cli("config", "default").stdout
    assert parse_config(out) == load_config()


@pytest.mark.parametrize("path,edit", [
    ("vip.port", ("port: 80}", "port: eighty}")),
    ("hosts.backends.0.weight", ("direct_port: 8080}", "direct_port: 8080, weight: -1}")),
    ("switch.profile", ("profile: software", "profile: asic")),
])
def test_wrong_types_name_the_key(path, edit):
    text = DEFAULT_CONFIG.read_text().replace(*edit, 1)
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert path in str(e.value)


def test_rule_pool_must_name_backends():
    text = DEFAULT_CONFIG.read_text().replace("pool: [be1, be2, be3]", "pool: [be1, be9]")
    with pytest.raises(ConfigError, match="be9"):
        parse_config(text)


# --- secrets: from a file or an environment variable; the built-in demo values refused ----------

SECRET_LINE = 'cookie: {secret: "miresga-default-cookie-secret-change-me", bucket_seconds: 64}'
TOKEN_LINE = 'control: {port: 50051, token: "miresga-default-token-change-me"}'


def _with_secrets(cookie: str, control: str) -> str:
    text = DEFAULT_CONFIG.read_text()
    assert SECRET_LINE in text and TOKEN_LINE in text
    return text.replace(SECRET_LINE, f"cookie: {cookie}").replace(TOKEN_LINE, f"control: {control}")


def test_secrets_from_file_and_environment(tmp_path, monkeypatch):
    (tmp_path / "cookie.secret").write_text("s3cret-from-a-file-0123456789\n")
    monkeypatch.setenv("MG_TEST_TOKEN", "token-from-the-environment-0123")
    f = tmp_path / "cfg.yaml"
    f.write_text(_with_secrets("{secret_file: cookie.secret}", "{token_env: MG_TEST_TOKEN}"))
    cfg = load_config(f)  # a relative file is read next to the config
    assert cfg.switch.cookie.secret == "s3cret-from-a-file-0123456789"
    assert cfg.switch.control.token == "token-from-the-environment-0123"
    assert not demo_secrets(cfg) and demo_secrets(load_config()) == ["switch.cookie.secret", "switch.control.token"]


@pytest.mark.parametrize("cookie,control,words", [
    ("{secret_file: /nonexistent/secret}", "{token: abcdefabcdefabcdef}",
     "switch.cookie.secret_file: cannot read /nonexistent/secret"),
    ("{secret: abcdefabcdefabcdefab}", "{token_env: MG_TEST_UNSET_VAR}",
     "switch.control.token_env: environment variable MG_TEST_UNSET_VAR is not set"),
    ("{secret: abcdefabcdefabcdefab, secret_env: X}", "{token: abcdefabcdefabcdef}",
     "switch.cookie.secret_env: give only one of secret, secret_file, secret_env"),
    ("{secret: abcdefabcdefabcdefab}", "{token: short}", "switch.control.token"),
], ids=["unreadable file", "unset variable", "two sources", "too short"])
def test_secret_errors_name_the_key_and_line(tmp_path, monkeypatch, cookie, control, words):
    monkeypatch.delenv("MG_TEST_UNSET_VAR", raising=False)
    f = tmp_path / "cfg.yaml"
    text = _with_secrets(cookie, control)
    f.write_text(text)
    p = _cli("check-config", str(f))
    assert p.returncode != 0 and words in p.stderr, p.stderr
    key = words.split(":")[0].rsplit(".", 1)[0].split(".")[-1]  # cookie / control
    line = next(i for i, l in enumerate(text.splitlines(), 1) if l.strip().startswith(f"{key}:"))
    assert f"cfg.yaml:{line}" in p.stderr


@pytest.mark.parametrize("command", [["switch"], ["frontend", "--name", "fe1"]])
def test_switch_and_frontend_refuse_the_demo_secrets(command):
    """Outside the testbed (which makes its own), the shipped secrets are refused before anything
    starts, with what to set."""
    p = _cli(*command)
    assert p.returncode == 2
    for words in ("refusing to start", "switch.cookie.secret", "switch.control.token", "built-in demo values",
                  "secret_file", "token_env"):
        assert words in p.stderr, p.stderr


def test_switch_refuses_a_control_api_without_tls(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text(_with_secrets("{secret: abcdefabcdefabcdefab}", "{token: abcdefabcdefabcdef}"))
    p = _cli("switch", "--config", str(f))
    assert p.returncode == 2 and "switch.control.tls_dir is not set" in p.stderr and "certs make" in p.stderr


def test_testbed_instances_get_their_own_secrets(tmp_path):
    from miresga.testbed.testbed import instance_config
    a, b = (instance_config(load_config(), tmp_path / n) for n in ("a", "b"))
    assert not demo_secrets(a) and not demo_secrets(b)
    assert a.switch.cookie.secret != b.switch.cookie.secret and a.switch.control.token != b.switch.control.token
    assert a.switch.control.tls_dir == tmp_path / "a" / "pki"
    mine = load_config().model_copy(update={"switch": load_config().switch.model_copy(update={
        "cookie": load_config().switch.cookie.model_copy(update={"secret": "my-own-secret-0123456789"})})})
    assert instance_config(mine, tmp_path).switch.cookie.secret == "my-own-secret-0123456789"  # kept


@pytest.mark.parametrize("match,key", [
    ('{path_regex: "(unclosed"}', "rules.0.match.path_regex"),
    ('{headers: {x-a: "[z-a]"}}', "rules.0.match.headers"),
])
def test_rule_regex_must_compile(tmp_path, match, key):
    """A bad regex fails `check-config` naming the key, instead of crashing a front-end at start."""
    text = DEFAULT_CONFIG.read_text().replace("match: {path_prefix: /video/}", f"match: {match}", 1)
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    p = _cli("check-config", str(f))
    assert p.returncode != 0 and key in p.stderr and "regular expression" in p.stderr, p.stderr


# --- real machines: interfaces, MACs, shared subnets, routers; lb and clients optional ----------

REAL = """
vip: {address: 203.0.113.10, port: 443}
switch:
  cookie: {secret: 0123456789abcdef0123}
  control: {token: 0123456789abcdef0123}
hosts:
  frontends:
    - {name: fe1, address: 10.1.0.11/24, interface: ens1f0, nic: ens5}
  backends:
    - {name: be1, address: 10.2.0.21/24, interface: ens1f1, mac: "52:54:00:aa:bb:01"}
    - {name: be2, address: 10.2.0.22/24, interface: ens1f1}
  routers:
    - {name: up, address: 192.0.2.2/30, interface: ens2, gateway: 192.0.2.1, routes: [0.0.0.0/0]}
rules:
  - {name: all, pool: [be1, be2]}
"""


def test_real_machines_config():
    cfg = parse_config(REAL)
    assert cfg.hosts.clients == [] and cfg.hosts.lb is None
    be1, be2 = cfg.hosts.backends
    assert be1.address.network == be2.address.network
    assert str(be1.gateway) == str(be2.gateway) == "10.2.0.1"
    assert be1.mac == "52:54:00:aa:bb:01" and be2.mac == "auto" and cfg.hosts.frontends[0].nic == "ens5"
    assert [str(r) for r in cfg.hosts.routers[0].routes] == ["0.0.0.0/0"]


@pytest.mark.parametrize("edit,key", [
    (('mac: "52:54:00:aa:bb:01"', 'mac: "52:54:00:aa:bb"'), "hosts.backends.0.mac"),
    (("interface: ens1f0", "interface: 'eth 0'"), "hosts.frontends.0.interface"),
    (("10.2.0.22/24, interface: ens1f1", "10.2.0.22/24, interface: ens1f2"), "share 10.2.0.0/24"),
    (("10.2.0.22/24", "10.2.0.22/25"), "overlap"),
    (("gateway: 192.0.2.1", "gateway: 192.0.2.9"), "hosts.routers.0"),
    (("routes: [0.0.0.0/0]", "routes: []"), "hosts.routers.0.routes"),
])
def test_real_machines_errors_name_the_key(edit, key):
    with pytest.raises(ConfigError) as e:
        parse_config(REAL.replace(*edit, 1))
    assert key in str(e.value)


def test_check_config_missing_file_is_a_message_not_a_traceback(tmp_path):
    p = _cli("check-config", str(tmp_path / "nope.yaml"))
    assert p.returncode != 0 and "cannot read config" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("args,words", [
    (["agent", "run", "--backend", "be9"], "--backend be9: no such back-end"),
    (["agent", "run"], "give --iface, or --backend"),
    (["switch", "--config", "/nonexistent/miresga.yaml"], "cannot read config"),
    (["frontend", "--config", "/nonexistent/miresga.yaml", "--name", "fe1"], "cannot read config"),
    (["frontend", "--name", "fe9"], "no front-end named 'fe9'"),
])
def test_daemons_fail_with_a_message_not_a_traceback(args, words):
    p = _cli(*args)
    assert p.returncode != 0 and words in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_bad_mac_names_the_key(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text(DEFAULT_CONFIG.read_text().replace("{name: be2, address: 10.0.5.2/24,",
                                                    "{name: be2, address: 10.0.5.2/24, mac: 02:00:zz:00:00:01,"))
    p = _cli("switch", "--config", str(f))
    assert p.returncode != 0 and "hosts.backends.1.mac" in p.stderr and "Traceback" not in p.stderr, p.stderr


# --- attach modes (XDP or TC) ------------------------------------------------------------------

def test_attach_modes_default_tc_and_resolve_per_interface_and_backend():
    text = DEFAULT_CONFIG.read_text().replace("{name: c1, address: 10.0.1.2/24}",
                                              "{name: c1, address: 10.0.1.2/24, interface: eth1}")
    text = text.replace("  sack: true\n", "  sack: true\n  attach: auto\n  attach_interfaces: {eth1: tc}\n")
    text = text.replace("{name: be2, address: 10.0.5.2/24,", "{name: be2, address: 10.0.5.2/24, agent_attach: xdp,")
    cfg = parse_config(text)
    assert cfg.switch_attach("eth1") == "tc" and cfg.switch_attach("eth2") == "auto"
    assert cfg.agent_attach("be1") == "tc" and cfg.agent_attach("be2") == "xdp"
    assert load_config().switch_attach("p-c1") == "tc"   # the default changes nothing


@pytest.mark.parametrize("edit,key", [
    (("  sack: true\n", "  sack: true\n  attach: native\n"), "switch.attach"),
    (("  sack: true\n", "  sack: true\n  attach_interfaces: {eth9: xdp}\n"), "switch.attach_interfaces.eth9"),
    (("{name: be1, address: 10.0.4.2/24,", "{name: be1, address: 10.0.4.2/24, agent_attach: fast,"),
     "hosts.backends.0.agent_attach"),
])
def test_attach_mode_errors_name_the_key(edit, key):
    with pytest.raises(ConfigError) as e:
        parse_config(DEFAULT_CONFIG.read_text().replace(*edit, 1))
    assert key in str(e.value)

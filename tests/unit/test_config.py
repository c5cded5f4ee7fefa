import subprocess
import sys

import pytest

from miresga.control.config import DEFAULT_CONFIG, ConfigError, load_config, parse_config


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

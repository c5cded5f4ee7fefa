"""`miresga reload` and `miresga backend` on a config file (no processes: validation and edits)."""

from __future__ import annotations

import yaml

from miresga.control.cli import main
from miresga.control.config import DEFAULT_CONFIG, load_config


def cfg_file(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text(DEFAULT_CONFIG.read_text())
    return f


def test_backend_drain_remove_add_edit_the_file(tmp_path, capsys):
    f = cfg_file(tmp_path)
    assert main(["backend", "drain", "be2", "--config", str(f)]) == 0
    assert load_config(f).backend("be2").drain
    assert main(["backend", "undrain", "be2", "--config", str(f)]) == 0
    assert not load_config(f).backend("be2").drain
    assert main(["backend", "remove", "be1", "--config", str(f)]) == 0
    cfg = load_config(f)
    assert cfg.backend("be1").drain and not any("be1" in r.pool for r in cfg.rules)
    assert [b.name for b in cfg.hosts.backends] == ["be1", "be2", "be3"]    # stays: its position counts
    assert main(["backend", "add", "be1", "--rule", "api", "--config", str(f)]) == 0
    cfg = load_config(f)
    assert not cfg.backend("be1").drain and [r.name for r in cfg.rules if "be1" in r.pool] == ["api"]
    assert main(["backend", "set", "be3", "--max-connections", "7", "--weight", "3", "--config", str(f)]) == 0
    assert (load_config(f).backend("be3").max_connections, load_config(f).backend("be3").weight) == (7, 3)


def test_refused_edit_leaves_the_file_alone(tmp_path, capsys):
    f = cfg_file(tmp_path)
    before = f.read_text()
    # be3 is static-site's only back-end: taking it out of every pool leaves that pool empty
    assert main(["backend", "remove", "be3", "--config", str(f)]) == 1
    err = capsys.readouterr().err
    assert "reload refused, nothing changed" in err and "rules.3.pool" in err
    assert f.read_text() == before
    assert main(["backend", "add", "be3", "--rule", "nope", "--config", str(f)]) == 2
    assert f.read_text() == before


def test_reload_refuses_an_invalid_file(tmp_path, capsys):
    f = cfg_file(tmp_path)
    data = yaml.safe_load(f.read_text())
    data["rules"][0]["pool"] = ["be9"]
    f.write_text(yaml.safe_dump(data))
    assert main(["reload", "--config", str(f), "--pid", "999999999"]) == 1
    assert "unknown back-ends ['be9']" in capsys.readouterr().err

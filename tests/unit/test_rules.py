"""Rules: first match wins, host/path/method/header predicates, the implicit default."""

from __future__ import annotations

from frontend_helpers import make_cfg
from miresga.frontend.http import RequestHead
from miresga.frontend.rules import RuleSet

RULES = """
rules:
  - {name: exact, match: {path_exact: /login}, pool: [be1]}
  - {name: img, match: {path_regex: '\\.(png|jpe?g)$'}, pool: [be2]}
  - {name: api-post, match: {path_prefix: /api/, method: 'POST,PUT'}, pool: [be3]}
  - {name: api, match: {path_prefix: /api/}, pool: [be2]}
  - {name: beta, match: {headers: {X-Beta: '^(1|yes)$'}}, pool: [be3]}
  - {name: wild, match: {host: '*.static.example'}, pool: [be1]}
  - {name: both, match: {host: shop.example, path_prefix: /cart}, pool: [be2]}
"""


def head(path="/", method="GET", host="a.example", **headers):
    h = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return RequestHead(method, path, "", host, h)


def names(rs, *heads):
    return [rs.match(h).name for h in heads]


def test_first_match_order_and_predicates():
    rs = RuleSet(make_cfg(RULES))
    assert names(rs, head("/login"), head("/login/x"), head("/a/b.png"), head("/api/x.jpg")) == \
        ["exact", "default", "img", "img"]      # the regex rule comes before /api/
    assert names(rs, head("/api/u", "POST"), head("/api/u", "PUT"), head("/api/u", "GET")) == \
        ["api-post", "api-post", "api"]


def test_header_regex_rule():
    rs = RuleSet(make_cfg(RULES))
    assert names(rs, head(x_beta="yes"), head(x_beta="1"), head(x_beta="no"), head()) == \
        ["beta", "beta", "default", "default"]


def test_host_rules():
    rs = RuleSet(make_cfg(RULES))
    assert names(rs, head(host="img.static.example"), head(host="static.example"),
                 head("/cart/1", host="shop.example"), head("/cart/1", host="other")) == \
        ["wild", "default", "both", "default"]


def test_implicit_default_covers_all_backends():
    rs = RuleSet(make_cfg(RULES))
    d = rs.match(head("/nothing"))
    assert d.name == "default" and d.pool == (0, 1, 2) and d.offload == "auto"


def test_explicit_catch_all_is_the_default():
    rs = RuleSet(make_cfg(RULES + "  - {name: rest, pool: [be3], offload: never}\n"))
    assert rs.match(head("/nothing")).name == "rest" and rs.default.name == "rest"
    assert [r.name for r in rs.all()][-1] == "rest"

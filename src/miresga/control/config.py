"""The deployment config: one YAML file, one typed schema.

Every part of Miresga (testbed, switch controller, front-ends, agents, bench) reads the same
`Deployment`. Unknown keys and wrong types are rejected with the dotted path of the key (and its
line in the file where known), so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    """Base for every config section: no unknown keys, no silent type coercion of strings."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Endpoint(Strict):
    address: ipaddress.IPv4Address
    port: int = Field(ge=1, le=65535)


MAC_RE = r"^(auto|[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5})$"
IFNAME_RE = r"^[A-Za-z0-9_.@-]{1,15}$"


class Host(Strict):
    """One machine of the fabric: a namespace on the testbed, a real host elsewhere.

    `address` carries its prefix. `interface` is the switch's interface behind which the host
    lies; `gateway` is the switch's address on that network (default: its first address), the
    host's default route. `mac` is the host's MAC as the switch must write it: `auto` reads it from
    the switch host's neighbour table (resolving it by ARP first). Several hosts may share one
    network (same prefix, same interface and gateway).
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9]{0,7}$")
    address: ipaddress.IPv4Interface
    interface: str | None = Field(default=None, pattern=IFNAME_RE, description="the switch's interface "
                                  "toward this host (the testbed fills in its veth, p-<name>)")
    mac: str = Field(default="auto", pattern=MAC_RE, description="this host's MAC: auto = the switch host's "
                     "neighbour table (ARP), or aa:bb:cc:dd:ee:ff")
    nic: str = Field(default="eth0", pattern=IFNAME_RE, description="the host's own interface on the fabric "
                     "(where a front-end or an agent attaches)")
    gateway: ipaddress.IPv4Address = Field(
        default=None, validate_default=False, description="the switch's address on this host's network "
        "(default: the network's first address)")

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.address.ip

    @model_validator(mode="before")
    @classmethod
    def _default_gateway(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("gateway") is None and "address" in data:
            try:
                net = ipaddress.IPv4Interface(data["address"]).network
                data = {**data, "gateway": str(next(net.hosts()))}
            except (ValueError, StopIteration, TypeError):
                pass  # the address's own error names the key
        return data

    @model_validator(mode="after")
    def _gateway_on_link(self) -> "Host":
        gw = self.gateway
        if gw not in self.address.network or gw == self.ip:
            raise ValueError(f"gateway {gw} must be another address of {self.address.network}")
        return self


AttachMode = Literal["auto", "xdp", "tc"]
ATTACH_HELP = ("auto: native XDP where the driver takes it, TC otherwise; xdp: native XDP or fail at start; "
               "tc: TC (works everywhere)")


class Backend(Host):
    port: int = Field(default=80, ge=1, le=65535, description="service port Miresga balances to")
    agent_attach: AttachMode | None = Field(
        default=None, description="the agent's ingress on this back-end's nic (unset: agent.attach). " + ATTACH_HELP)
    direct_port: int = Field(default=8080, ge=1, le=65535, description="port for traffic that bypasses Miresga")
    weight: int = Field(default=1, ge=0, le=1000)
    site: str = Field(default="default", description="object catalog name this back-end serves")
    drain: bool = Field(default=False, description="no new connections or re-routed requests; established "
                        "ones finish (`miresga backend drain|undrain`)")
    max_connections: int = Field(default=0, ge=0, description="per front-end: beyond this many connections the "
                                 "back-end is skipped by selection (0 = no limit)")


class LbHost(Host):
    """Host of the peer load balancers (nginx, HAProxy) that the benchmark compares against."""

    nginx_port: int = Field(default=80, ge=1, le=65535)
    haproxy_port: int = Field(default=81, ge=1, le=65535)


class Router(Host):
    """A next hop toward clients that are not directly attached (an upstream router): the switch
    sends traffic for `routes` to it. `0.0.0.0/0` makes it the default route (clients anywhere)."""

    routes: list[ipaddress.IPv4Network] = Field(min_length=1, description="destinations behind this router")


class Hosts(Strict):
    clients: list[Host] = Field(default_factory=list, description="directly attached clients (optional: "
                                "clients behind `routers` need no entry)")
    frontends: list[Host] = Field(min_length=1)
    backends: list[Backend] = Field(min_length=1)
    routers: list[Router] = Field(default_factory=list)
    lb: LbHost | None = Field(default=None, description="testbed/benchmark only: host of the peer LBs")

    def all(self) -> list[Host]:
        return [*self.clients, *self.frontends, *self.backends, *self.routers, *([self.lb] if self.lb else [])]

    @model_validator(mode="after")
    def _unique(self) -> "Hosts":
        hosts = self.all()
        names = [h.name for h in hosts]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"host names must be unique, repeated: {sorted(dup)}")
        ips = [h.ip for h in hosts]
        dup_ip = {str(a) for a in ips if ips.count(a) > 1}
        if dup_ip:
            raise ValueError(f"host addresses must be unique, repeated: {sorted(dup_ip)}")
        # Hosts may share a network (several back-ends on one subnet) if they agree on it: same
        # prefix, same switch interface, same gateway. Networks that only partly overlap are an error.
        for i, a in enumerate(hosts):
            for b in hosts[i + 1:]:
                na, nb = a.address.network, b.address.network
                if not na.overlaps(nb):
                    continue
                if na != nb:
                    raise ValueError(f"host networks overlap: {a.name} {na} and {b.name} {nb}")
                if a.interface != b.interface or a.gateway != b.gateway:
                    raise ValueError(f"{a.name} and {b.name} share {na}: they need the same interface and "
                                     f"gateway (have {a.interface}/{a.gateway} and {b.interface}/{b.gateway})")
            if a.gateway in ips:
                raise ValueError(f"{a.name}'s gateway {a.gateway} is another host's address")
        return self


class Cookie(Strict):
    secret: str = Field(min_length=16, description="hex or text; keys are derived from it; or secret_file / "
                        "secret_env")
    bucket_seconds: int = Field(default=64, ge=1, le=3600)
    rotate_seconds: int = Field(default=3600, ge=10)


Port = Annotated[int, Field(ge=1, le=65535)]


class ControlApi(Strict):
    port: int = Field(default=50051, ge=1, le=65535)
    token: str = Field(min_length=16, description="shared secret every caller of the control API presents "
                       "(with TLS: a second factor next to its certificate); or token_file / token_env")
    tls_dir: Path | None = Field(
        default=None, description="the control API's certificates (`miresga certs make`): ca.crt, "
        "<switch.name>.crt/.key, <front-end>.crt/.key, admin.crt/.key; unset: token only, in clear")
    listen: list[ipaddress.IPv4Address] | None = Field(
        default=None, description="addresses the control API listens on (default: 127.0.0.1 and the "
        "switch's gateway on each front-end's network)")
    guard_ports: list[Port] = Field(
        default_factory=list, description="further TCP ports of the switch's own addresses that, like "
        "`port`, only front-ends may reach (the data plane drops the rest)")


class Switch(Strict):
    name: str = Field(default="sw", pattern=r"^[a-z][a-z0-9]{0,7}$")
    profile: Literal["software", "tofino"] = "software"
    insert_rate: int = Field(default=17000, ge=1, description="tofino profile: offload inserts+deletes per second")
    batch_latency_ms: float = Field(default=1.0, ge=0)
    offload_capacity: int | None = Field(default=None, ge=1, description="override the profile's table size")
    idle_timeout_s: float = Field(default=10.0, gt=0)
    mss: int = Field(default=1460, ge=536, le=9000)
    window_scale: int = Field(default=7, ge=0, le=14)
    sack: bool = True
    cookie: Cookie
    control: ControlApi
    attach: AttachMode = Field(default="tc", description="how the switch program is attached to its "
                               "interfaces. " + ATTACH_HELP)
    attach_interfaces: dict[str, AttachMode] = Field(
        default_factory=dict, description="per switch interface (hosts.*.interface): overrides `attach`")
    metrics_port: int = Field(default=9101, ge=1, le=65535,
                              description="Prometheus endpoint of `miresga switch` (miresga_switch_*)")
    metrics_address: ipaddress.IPv4Address = Field(
        default=ipaddress.IPv4Address("127.0.0.1"), description="where the switch's Prometheus endpoint "
        "listens (in the switch's namespace): loopback or a management address, never a fabric address")


class Match(Strict):
    host: str | None = None
    path_exact: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    method: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="header name -> regex")

    @field_validator("path_regex")
    @classmethod
    def _path_regex_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            _compiles(v)
        return v

    @field_validator("headers")
    @classmethod
    def _header_regexes_compile(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            try:
                _compiles(pattern)
            except ValueError as e:
                raise ValueError(f"header {name!r}: {e}") from None
        return v


def _compiles(pattern: str) -> None:
    """A rule's regex must compile here, not when a front-end starts (it would crash there)."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"not a valid regular expression ({e}): {pattern!r}") from None


class Rule(Strict):
    name: str
    match: Match = Field(default_factory=Match)
    pool: list[str] = Field(min_length=1, description="back-end names")
    policy: Literal["round_robin", "weighted", "least_conn", "hash_client", "hash_header"] = "round_robin"
    hash_header: str | None = None
    offload: Literal["always", "never", "auto"] = "auto"
    offload_threshold: int = Field(default=65536, ge=0, description="auto: offload when the response's bytes "
                                   "still to come (Content-Length minus the body already seen) are at least this")
    offload_after_requests: int = Field(
        default=2, ge=0, description="auto: also offload a keep-alive connection from its Nth request on "
        "(its responses and the client's ACKs then bypass the front-end); 0 = never by count")
    offload_wait: bool = Field(
        default=False, description="always: hold each routed request until its offload entry is installed "
        "(a fresh entry per request: Prism's blocking table sync, the bench's `prism` system)")
    redispatch: int = Field(
        default=1, ge=0, le=8, description="a back-end that refuses the splice SYN (RST) or never answers it "
        "(after frontend.syn_retries): try this many other back-ends of the pool before a 503")

    @model_validator(mode="after")
    def _hash_header(self) -> "Rule":
        if self.policy == "hash_header" and not self.hash_header:
            raise ValueError("policy hash_header needs hash_header")
        return self


class AccessLog(Strict):
    file: str = Field(default="-", description="path of the log file (reopened on SIGUSR1, for logrotate; "
                      "`{frontend}` in it is the front-end's name); - = stdout")
    format: Literal["json", "combined"] = Field(default="json", description="json: one JSON object a line; "
                                                "combined: nginx's combined format plus Miresga's fields")
    sample: float = Field(default=1.0, gt=0, le=1, description="share of requests logged (random draw)")


class Frontend(Strict):
    max_header_bytes: int = Field(default=16384, ge=256, le=1 << 20)
    header_timeout_s: float = Field(default=10.0, gt=0)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    syn_retransmit_s: float = Field(default=1.0, gt=0)
    syn_retries: int = Field(default=3, ge=0)
    health_interval_s: float = Field(default=1.0, gt=0)
    health_path: str = "/health"
    metrics_port: int = Field(default=9100, ge=1, le=65535)
    metrics_address: ipaddress.IPv4Address = Field(
        default=ipaddress.IPv4Address("127.0.0.1"), description="where the Prometheus endpoint listens: "
        "loopback or a management address, never the fabric address clients reach")
    # Additions for the engine's bounds and timers (see docs/frontend.md).
    health_timeout_s: float = Field(default=0.5, gt=0)
    health_rise: int = Field(default=2, ge=1, description="successful checks before a back-end is back")
    health_fall: int = Field(default=2, ge=1, description="failed checks before a back-end leaves pools")
    max_connections: int = Field(default=262144, ge=1, description="connection table bound")
    max_held_bytes: int = Field(default=262144, ge=1024,
                                description="per connection: request bytes held until the back-end answers")
    reorder_grace_s: float = Field(default=1.0, gt=0,
                                   description="wait for a missing first segment before calling the request garbage")
    close_linger_s: float = Field(default=2.0, gt=0, description="relay the last ACKs after both FINs")
    response_rto_s: float = Field(default=0.5, gt=0, description="retransmit timeout of 400/431/503 responses")
    response_retries: int = Field(default=3, ge=0)
    checksum: Literal["offload", "software"] = Field(
        default="offload", description="offload: frames leave with a partial checksum the kernel completes")
    ack_coalesce_ms: float = Field(
        default=5.0, ge=0, le=100, description="hold a pure ACK that acknowledges everything the other side "
        "sent this long: a segment that follows with the same ack makes it redundant (0 = relay at once)")
    access_log: AccessLog | None = Field(default=None, description="one line per request (unset: none)")
    kernel_path: bool = Field(
        default=True, description="relay established connections in eBPF on the front-end's interface "
        "(bpf/frontend.bpf.c); off: the Python engine relays every segment")


class Agent(Strict):
    capacity: int = Field(default=65536, ge=16)
    attach: AttachMode = Field(default="tc", description="the agent's ingress program (egress is always TC, "
                               "XDP has no egress hook); per back-end: hosts.backends.*.agent_attach. " + ATTACH_HELP)
    idle_timeout_s: float = Field(default=120.0, gt=0)
    metrics_port: int = Field(default=9102, ge=1, le=65535,
                              description="Prometheus endpoint of `miresga agent run` (miresga_agent_*)")
    metrics_address: ipaddress.IPv4Address = Field(
        default=ipaddress.IPv4Address("127.0.0.1"), description="where the agent's Prometheus endpoint listens "
        "(in the back-end's namespace): loopback or a management address")


class Objects(Strict):
    sizes: list[int] = Field(
        default=[1024, 10240, 65536, 1 << 20, 8 << 20, 10 << 20, 100 << 20], min_length=1)


MAX_SERVICES = 16   # VIP:port services, the default one included (bpf/switch.h SW_SERVICES_MAX)


class Service(Strict):
    """One more VIP:port with its own rules (the top-level `vip` and `rules` are the first
    service, named `default`). Every back-end may serve several services."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    vip: Endpoint
    rules: list[Rule] = Field(default_factory=list, description="matched against this service's "
                              "requests only; unmatched requests go to an implicit default over every back-end")


class Deployment(Strict):
    vip: Endpoint
    switch: Switch
    hosts: Hosts
    rules: list[Rule] = Field(default_factory=list)
    services: list[Service] = Field(
        default_factory=list, max_length=MAX_SERVICES - 1,
        description="more VIP:port services, each with its own rules, served beside `vip` (the `default` service)")
    frontend: Frontend = Field(default_factory=Frontend)
    agent: Agent = Field(default_factory=Agent)
    objects: Objects = Field(default_factory=Objects)

    @model_validator(mode="after")
    def _refs(self) -> "Deployment":
        names = {b.name for b in self.hosts.backends}
        seen: dict[tuple[Any, int], str] = {}
        for n, svc in enumerate(self.all_services()):
            where = "" if n == 0 else f"services.{n - 1}."
            for i, r in enumerate(svc.rules):
                unknown = [p for p in r.pool if p not in names]
                if unknown:
                    raise ValueError(f"{where}rules.{i}.pool: unknown back-ends {unknown}")
            for h in self.hosts.all():
                if svc.vip.address in h.address.network:
                    raise ValueError(f"{where}vip.address {svc.vip.address} lies in host {h.name}'s network")
            ep = (svc.vip.address, svc.vip.port)
            if ep in seen:
                raise ValueError(f"{where}vip: {ep[0]}:{ep[1]} is already service {seen[ep]!r}'s")
            if svc.name in seen.values():
                raise ValueError(f"{where}name: {svc.name!r} is used twice (`default` is the top-level vip's)")
            seen[ep] = svc.name
        ifaces = {h.interface for h in self.hosts.all() if h.interface}
        for name in self.switch.attach_interfaces:
            if name not in ifaces:
                raise ValueError(f"switch.attach_interfaces.{name}: no host is behind a switch interface of that "
                                 f"name (have {sorted(ifaces)})")
        return self

    def all_services(self) -> list[Service]:
        """Every VIP:port service; its position is its index in every table (switch, front-end,
        offload API): the top-level `vip` and `rules` first, as `default`."""
        return [Service.model_construct(name="default", vip=self.vip, rules=self.rules), *self.services]

    def backend_services(self) -> list[set[int]]:
        """Per back-end (by position), the services whose rules may send it connections (a
        service whose rules end without a catch-all has the implicit default over every back-end)."""
        names = [b.name for b in self.hosts.backends]
        users: list[set[int]] = [set() for _ in names]
        for i, svc in enumerate(self.all_services()):
            pools = {names.index(n) for r in svc.rules for n in r.pool}
            if not svc.rules or svc.rules[-1].match != Match():
                pools = set(range(len(names)))
            for b in pools:
                users[b].add(i)
        return users

    def service_warnings(self) -> list[str]:
        """What validates but will hurt with several services: a rule whose pool is one back-end
        that another service's rules use too. One client ip:port may hold connections to two
        services at once (Linux reuses a source port towards other destinations), and a back-end
        cannot take that ip:port twice: the later connection goes to another back-end of its pool,
        and with none left it gets a 503."""
        if not self.services:
            return []
        names = [b.name for b in self.hosts.backends]
        users = self.backend_services()
        services = self.all_services()
        out = []
        for i, svc in enumerate(services):
            for j, r in enumerate(svc.rules):
                others = users[names.index(r.pool[0])] - {i} if len(set(r.pool)) == 1 else set()
                if others:
                    key = f"rules.{j}" if i == 0 else f"services.{i - 1}.rules.{j}"
                    who = [services[k].name for k in sorted(others)]
                    out.append(f"{key}.pool: only {r.pool[0]}, which {'service' if len(who) == 1 else 'services'} "
                               f"{', '.join(who)} also {'uses' if len(who) == 1 else 'use'}: a request whose client "
                               f"ip:port already has another service's connection on it gets a 503 (add a back-end)")
        return out

    def vip_endpoints(self) -> list[tuple[int, int]]:
        """(VIP as an int, port) by service index: what the front-end matches segments against."""
        return [(int(s.vip.address), s.vip.port) for s in self.all_services()]

    def service_addresses(self) -> list[tuple[str, int]]:
        """(VIP as text, port) by service index: what the switch's tables and the front-end's
        capture filter are written from."""
        return [(str(s.vip.address), s.vip.port) for s in self.all_services()]

    def services_line(self) -> str:
        """The services as the processes log them: name VIP:port, by index."""
        return ", ".join(f"{s.name} {s.vip.address}:{s.vip.port}" for s in self.all_services())

    def switch_attach(self, ifname: str) -> str:
        """The attach mode (auto, xdp, tc) of the switch program on one of its interfaces."""
        return self.switch.attach_interfaces.get(ifname, self.switch.attach)

    def agent_attach(self, backend: str) -> str:
        """The attach mode of the agent's ingress program on a back-end."""
        b = self.backend(backend)
        return b.agent_attach or self.agent.attach

    def backend(self, name: str) -> Backend:
        return next(b for b in self.hosts.backends if b.name == name)


class ConfigError(Exception):
    """A config that does not fit the schema; the message names every bad key."""


DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")

# Secrets that may come from a file (<key>_file: path, relative to the config file) or an
# environment variable (<key>_env: NAME) instead of the YAML itself.
SECRET_KEYS = (("switch", "cookie", "secret"), ("switch", "control", "token"))
# The values in default.yaml: public, so `miresga switch` and `miresga frontend` refuse them (the
# testbed replaces them with random ones per instance).
DEMO_SECRETS = {"switch.cookie.secret": "miresga-default-cookie-secret-change-me",
                "switch.control.token": "miresga-default-token-change-me"}


def demo_secrets(cfg: "Deployment") -> list[str]:
    """The keys that still hold the built-in demo values."""
    have = {"switch.cookie.secret": cfg.switch.cookie.secret, "switch.control.token": cfg.switch.control.token}
    return [k for k, v in have.items() if v == DEMO_SECRETS[k]]


def demo_refusal(cfg: "Deployment", command: str) -> str | None:
    """Why `command` must not start with this config (built-in demo secrets), or None."""
    keys = demo_secrets(cfg)
    if not keys:
        return None
    return (f"{command}: refusing to start: {', '.join(keys)} "
            + ("is the built-in demo value" if len(keys) == 1 else "are the built-in demo values")
            + " shipped to everyone; set your own (e.g. `python3 -c 'import secrets; "
            "print(secrets.token_hex(32))'`) in the config, or point "
            + " / ".join(f"{k}_file or {k}_env" for k in keys)
            + " at a file or environment variable that holds it. The testbed and `miresga demo` make "
            "random ones per instance.")


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a key path in a YAML text (for error messages)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node = v
                    found = k
                    break
            else:
                return None
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            found = node
        else:
            return None
    return found.start_mark.line + 1 if loc else None


def _resolve_secrets(data: dict, text: str, source: str, base: Path | None) -> None:
    """Replace <key>_file / <key>_env of SECRET_KEYS by the secret they point at, in place."""
    errors = []
    for *path, name in SECRET_KEYS:
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        given = [k for k in (name, f"{name}_file", f"{name}_env") if k in node]
        dotted = ".".join(path)

        def err(key: str, msg: str) -> None:
            line = _line_of(text, (*path, key))
            errors.append(f"{source}:{line}: {dotted}.{key}: {msg}" if line else f"{source}: {dotted}.{key}: {msg}")
        if len(given) > 1:
            err(given[1], f"give only one of {name}, {name}_file, {name}_env")
            continue
        if f"{name}_file" in node:
            f = Path(str(node.pop(f"{name}_file")))
            if base is not None and not f.is_absolute():
                f = base / f
            try:
                value = f.read_text().strip()
            except OSError as e:
                err(f"{name}_file", f"cannot read {f}: {e.strerror or e}")
                continue
            if not value:
                err(f"{name}_file", f"{f} is empty")
                continue
            node[name] = value
        elif f"{name}_env" in node:
            var = str(node.pop(f"{name}_env"))
            value = os.environ.get(var, "").strip()
            if not value:
                err(f"{name}_env", f"environment variable {var} is not set (or empty)")
                continue
            node[name] = value
    if errors:
        raise ConfigError("\n".join(errors))


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> Deployment:
    """`base`: the directory that relative <secret>_file paths start from (the config file's)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    _resolve_secrets(data, text, source, base)
    try:
        return Deployment.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = _line_of(text, loc)
            where = f"{source}:{line}" if line else source
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{where}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path | None = None) -> Deployment:
    p = Path(path) if path else DEFAULT_CONFIG
    return parse_config(p.read_text(), str(p), p.parent)


def load_config_or_exit(path: str | Path | None = None, status: int = 2) -> Deployment:
    """For commands: the config, or a message naming what is wrong and exit `status`."""
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"invalid config:\n{e}", file=sys.stderr)
    except OSError as e:
        print(f"cannot read config: {e}", file=sys.stderr)
    raise SystemExit(status)

"""The front-end's operator hooks, on the loop's thread: live reload (SIGHUP) and the access log's
file (written every loop turn, reopened on SIGUSR1).

A reload re-reads the config file the front-end started with. It is applied as a whole or not at
all: a file that does not parse, or that changes what only a restart can change
(`pools.check_reload`), is refused with the reason in the log and the `reload_refused` event;
otherwise the engine takes the new rules, pools, policies, weights, drain and limits and timeouts
(`Engine.configure`: established connections keep their back-end until their next request), the
health checks their new settings, the access log its new file, format and sampling.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from miresga.control.config import ConfigError, Deployment, load_config
from miresga.frontend.access_log import AccessLog, LogFile
from miresga.frontend.packetio import capture_spec
from miresga.frontend.pools import check_reload

if TYPE_CHECKING:
    from miresga.frontend.server import FrontendServer

log = logging.getLogger("miresga.frontend")


class Operations:
    def __init__(self, server: "FrontendServer", config_path: str | Path | None):
        self.server = server
        self.config_path = config_path
        self.reload_wanted = False
        self.reopen_wanted = False
        self.file: LogFile | None = None
        self._use_log(*self._access_log(server.cfg))

    # signal handlers only set a flag: the work happens in poll(), between two loop turns
    def want_reload(self, *_: object) -> None:
        self.reload_wanted = True

    def want_reopen(self, *_: object) -> None:
        self.reopen_wanted = True

    def poll(self) -> None:
        if self.reload_wanted:
            self.reload_wanted = False
            self.reload()
        if self.reopen_wanted:
            self.reopen_wanted = False
            if self.file is not None:
                self.file.reopen()
                log.info("access log reopened: %s", self.file.path)
        alog = self.server.engine.alog
        if alog is not None and alog.lines and self.file is not None:
            self.file.write(alog.lines)

    def reload(self) -> list[str]:
        """Apply the config file again; the reasons it was refused (empty: applied)."""
        srv = self.server
        events = srv.engine.stats.events
        if self.config_path is None:
            why = ["started with the built-in config: nothing to reload"]
        else:
            try:
                new = load_config(self.config_path)
                why = check_reload(srv.cfg, new)
                log_to = None if why else self._access_log(new)   # a file that cannot open refuses it
            except (ConfigError, OSError) as e:
                why = [str(e)]
        if why:
            events["reload_refused"] += 1
            log.error("reload refused, nothing changed:\n  %s", "\n  ".join(why))
            return why
        self.apply(new, log_to)  # type: ignore[arg-type]
        events["reload_ok"] += 1
        log.info("reload applied: services %s; %d rules, back-ends %s", new.services_line(),
                 sum(len(s.rules) for s in new.all_services()),
                 ", ".join(f"{b.name}{' (drain)' if b.drain else ''}" for b in new.hosts.backends))
        return []

    def apply(self, cfg: Deployment, log_to: tuple[LogFile | None, AccessLog | None]) -> None:
        srv = self.server
        if self.server.engine.alog is not None and self.file is not None:
            self.file.write(srv.engine.alog.lines)   # what the old settings logged goes first
        added = len(cfg.all_services()) > len(srv.cfg.all_services())
        srv.cfg = cfg
        srv.engine.configure(cfg)
        if added:   # new services at the end (check_reload): their VIP:ports captured, and in the kernel
            srv.io.set_filter(*capture_spec(cfg))
            if srv.kpath is not None:
                srv.kpath.add_services(cfg.vip_endpoints())
        fe = cfg.frontend
        srv.health.rise, srv.health.fall = fe.health_rise, fe.health_fall
        hw = srv.health_worker
        hw.path, hw.interval, hw.timeout = fe.health_path, fe.health_interval_s, fe.health_timeout_s
        self._use_log(*log_to)
        srv.kernel_rules()      # the kernel path routes by the new rules, pools and drains too

    def _access_log(self, cfg: Deployment) -> tuple[LogFile | None, AccessLog | None]:
        """The file and the log `cfg` asks for (the open file kept if its path is the same)."""
        conf = cfg.frontend.access_log
        if conf is None:
            return None, None
        path = conf.file.replace("{frontend}", self.server.opts.name)
        f = self.file if self.file is not None and self.file.path == path else LogFile(path)
        return f, AccessLog([b.name for b in cfg.hosts.backends], conf.format, conf.sample)

    def _use_log(self, f: LogFile | None, alog: AccessLog | None) -> None:
        if self.file is not None and self.file is not f:
            self.file.close()
        self.file, self.server.engine.alog = f, alog

    def close(self) -> None:
        alog = self.server.engine.alog
        if self.file is not None:
            if alog is not None:
                self.file.write(alog.lines)
            self.file.close()
            self.file = None

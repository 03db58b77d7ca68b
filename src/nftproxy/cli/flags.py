"""kube-proxy's command-line flags (every one of the current release) and nftproxy's
own, as one table: each row is a flag, the setting it gives, and how its text is
read. :func:`settings_of` turns the flags given explicitly, then the config file,
then the defaults into :class:`~nftproxy.settings.Settings`.

A flag's text is converted here and validated with everything else
(:mod:`nftproxy.settings.validate`), so a bad value is one line naming the flag.
Flags kube-proxy has that mean nothing here (IPVS, Windows, ``--oom-score-adj``,
``--profiling``) are accepted with a warning. Booleans take ``--flag``,
``--flag=true`` and ``--flag=false``, as pflag's do.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from nftproxy import log
from nftproxy.settings import Settings, resolve
from nftproxy.settings.durations import parse_duration
from nftproxy.settings.kubeproxy import MODES
from nftproxy.settings.node import ConfigError, parse_bool
from nftproxy.settings.resolve import with_port
from nftproxy.sync import checkpoint


def _csv(text: str, _: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{flag}: not a whole number: {text!r}") from None


def _float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag}: not a number: {text!r}") from None


def _gates(text: str, flag: str) -> tuple[tuple[str, bool], ...]:
    out = []
    for pair in _csv(text, flag):
        name, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"{flag}: {pair!r}: want Gate=true|false")
        out.append((name.strip(), parse_bool(value, f"{flag} {name.strip()}")))
    return tuple(sorted(out))


def _str(text: str, _: str) -> str:
    return text


def _bool(value: Any, flag: str) -> bool:
    return parse_bool(value, flag)


Convert = Callable[[Any, str], Any]


@dataclass(frozen=True)
class Flag:
    """One flag: its names, the setting it gives (None: an action or ignored), how
    its text is read, and its help."""

    names: tuple[str, ...]
    setting: str | None
    convert: Convert
    help: str
    metavar: str | None = None
    ignored: str | None = None
    """Why the flag changes nothing here (a warning when given)."""
    boolean: bool = False

    @property
    def dest(self) -> str:
        return self.names[-1].lstrip("-").replace("-", "_")


def _flag(
    *names: str, setting: str | None, convert: Convert = _str, help: str, metavar: str | None = None
) -> Flag:
    return Flag(names, setting, convert, help, metavar)


def _bool_flag(name: str, setting: str | None, help: str) -> Flag:
    return Flag((name,), setting, _bool, help, "true|false", boolean=True)


def _ignored(name: str, why: str, *, boolean: bool = False) -> Flag:
    return Flag((name,), None, _str, f"accepted, ignored: {why}", None, why, boolean)


NODE_FLAGS = (
    _flag(
        "--config",
        setting=None,
        help="KubeProxyConfiguration file; flags given explicitly win",
        metavar="FILE",
    ),
    _flag(
        "--hostname-override",
        setting="hostname_override",
        help="node name: endpoints with this nodeName are local (default: hostname)",
        metavar="NAME",
    ),
    Flag(
        ("--node-ip",),
        "node_ips",
        _str,
        "node address, repeatable; the first of each family is primary "
        "(default: the Node's, then the host's)",
        "IP",
    ),
    _flag(
        "--cluster-cidr",
        setting="cluster_cidr",
        convert=_csv,
        help="pod CIDRs (a dual-stack pair at most); traffic from elsewhere to a "
        "ClusterIP is masqueraded",
        metavar="CIDR[,CIDR]",
    ),
    _flag(
        "--service-cidr",
        setting="service_cidr",
        convert=_csv,
        help="Service IP ranges; traffic to unallocated addresses is dropped",
        metavar="CIDR[,CIDR]",
    ),
    _flag(
        "--nodeport-addresses",
        setting="nodeport_addresses",
        convert=_csv,
        help="comma list of CIDRs and the words primary (default) and all",
        metavar="LIST",
    ),
    _bool_flag("--masquerade-all", "masquerade_all", "masquerade all traffic to Services"),
    _flag(
        "--detect-local-mode",
        setting="detect_local_mode",
        help="ClusterCIDR (default), NodeCIDR, BridgeInterface or InterfaceNamePrefix",
        metavar="MODE",
    ),
    _flag(
        "--pod-bridge-interface",
        setting="pod_bridge_interface",
        help="the bridge pods are attached to",
        metavar="NAME",
    ),
    _flag(
        "--pod-interface-name-prefix",
        setting="pod_interface_name_prefix",
        help="pods' host-side interfaces' prefix",
        metavar="PREFIX",
    ),
    _bool_flag(
        "--host-ports",
        "host_ports",
        "program Pods' hostPorts (default true; false when the CNI portmap plugin publishes them)",
    ),
    _bool_flag(
        "--service-counters",
        "service_counters",
        "count each Service port's new and rejected connections in the kernel (default true)",
    ),
)
"""The flags every command that builds a ruleset takes."""

DURATION = "DURATION"
RUN_FLAGS = (
    _flag(
        "--kubeconfig",
        setting="kubeconfig",
        help="kubeconfig (default: in-cluster)",
        metavar="FILE",
    ),
    _flag(
        "--master", setting="master", help="API server URL (overrides kubeconfig)", metavar="URL"
    ),
    _flag(
        "--kube-api-qps",
        setting="qps",
        convert=_float,
        help="requests per second to the API server (default 5)",
        metavar="QPS",
    ),
    _flag(
        "--kube-api-burst",
        setting="burst",
        convert=_int,
        help="burst of requests to the API server (default 10)",
        metavar="N",
    ),
    _flag(
        "--kube-api-content-type",
        setting="content_type",
        help="recorded; nftproxy's client speaks JSON",
        metavar="TYPE",
    ),
    _flag(
        "--bind-address",
        setting="bind_address",
        help="its family chooses the default healthz and metrics addresses (default 0.0.0.0)",
        metavar="IP",
    ),
    _flag(
        "--healthz-bind-address",
        setting="healthz_bind_address",
        help="IP[:PORT] of /healthz and /livez (default 0.0.0.0:10256; '' for none)",
        metavar="IP[:PORT]",
    ),
    _flag(
        "--metrics-bind-address",
        setting="metrics_bind_address",
        help="IP[:PORT] of /metrics (default 127.0.0.1:10249; '' for none)",
        metavar="IP[:PORT]",
    ),
    _flag(
        "--healthz-port",
        setting=None,
        convert=_int,
        help="deprecated (kube-proxy's): the healthz port, 0 for none",
        metavar="PORT",
    ),
    _flag(
        "--metrics-port",
        setting=None,
        convert=_int,
        help="deprecated (kube-proxy's): the metrics port, 0 for none",
        metavar="PORT",
    ),
    _bool_flag(
        "--bind-address-hard-fail", "bind_address_hard_fail", "exit when a server cannot bind"
    ),
    _flag(
        "--sync-period",
        setting="sync_period",
        convert=parse_duration,
        help="a sync at least this often (default 30s)",
        metavar=DURATION,
    ),
    _flag(
        "--iptables-sync-period",
        setting="sync_period",
        convert=parse_duration,
        help="kube-proxy's name of --sync-period",
        metavar=DURATION,
    ),
    _flag(
        "--min-sync-period",
        setting="min_sync_period",
        convert=parse_duration,
        help="at most one sync per period (default 1s; 0 allowed)",
        metavar=DURATION,
    ),
    _flag(
        "--iptables-min-sync-period",
        setting="min_sync_period",
        convert=parse_duration,
        help="kube-proxy's name of --min-sync-period",
        metavar=DURATION,
    ),
    _flag(
        "--drift-check-period",
        setting="drift_check_period",
        convert=parse_duration,
        help="read the kernel back this often and repair drift (default 60s; 0: never)",
        metavar=DURATION,
    ),
    _flag(
        "--config-sync-period",
        setting="config_sync_period",
        convert=parse_duration,
        help="recorded (kube-proxy's informer resync); watches relist on 410",
        metavar=DURATION,
    ),
    _flag(
        "--iptables-masquerade-bit",
        setting="masquerade_bit",
        convert=_int,
        help="the packet mark bit for masquerading (default 14)",
        metavar="BIT",
    ),
    _flag(
        "--conntrack-max-per-core",
        setting="conntrack_max_per_core",
        convert=_int,
        help="conntrack entries per CPU (default 32768; 0 leaves the limit)",
        metavar="N",
    ),
    _flag(
        "--conntrack-min",
        setting="conntrack_min",
        convert=_int,
        help="conntrack entries at least (default 131072)",
        metavar="N",
    ),
    _flag(
        "--conntrack-tcp-timeout-established",
        setting="conntrack_tcp_established_timeout",
        convert=parse_duration,
        help="(default 24h; 0 leaves it)",
        metavar=DURATION,
    ),
    _flag(
        "--conntrack-tcp-timeout-close-wait",
        setting="conntrack_tcp_close_wait_timeout",
        convert=parse_duration,
        help="(default 1h; 0 leaves it)",
        metavar=DURATION,
    ),
    _bool_flag(
        "--conntrack-tcp-be-liberal", "conntrack_tcp_be_liberal", "set nf_conntrack_tcp_be_liberal"
    ),
    _flag(
        "--conntrack-udp-timeout",
        setting="conntrack_udp_timeout",
        convert=parse_duration,
        help="(0 leaves it)",
        metavar=DURATION,
    ),
    _flag(
        "--conntrack-udp-timeout-stream",
        setting="conntrack_udp_stream_timeout",
        convert=parse_duration,
        help="(0 leaves it)",
        metavar=DURATION,
    ),
    _flag(
        "--feature-gates",
        setting="feature_gates",
        convert=_gates,
        help="Gate=true|false,...: known gates are followed, others warned about",
        metavar="GATES",
    ),
    _flag(
        "--proxy-mode",
        setting=None,
        help="nftables or empty; another mode is accepted with a warning",
        metavar="MODE",
    ),
    _flag(
        "-v",
        "--v",
        setting="log_verbosity",
        convert=_int,
        help="log verbosity: 4 or more logs debug lines",
        metavar="N",
    ),
    _flag(
        "--logging-format", setting="log_format", help="text (default) or json", metavar="FORMAT"
    ),
    _flag(
        "--write-config-to",
        setting=None,
        help="write the effective KubeProxyConfiguration to FILE and exit",
        metavar="FILE",
    ),
    _ignored("--profiling", "no profiling endpoint", boolean=True),
    _ignored("--oom-score-adj", "set it in the DaemonSet"),
    _ignored("--show-hidden-metrics-for-version", "no hidden metrics"),
    _ignored("--iptables-localhost-nodeports", "iptables mode only", boolean=True),
    _ignored("--ipvs-exclude-cidrs", "IPVS mode only"),
    _ignored("--ipvs-min-sync-period", "IPVS mode only"),
    _ignored("--ipvs-sync-period", "IPVS mode only"),
    _ignored("--ipvs-scheduler", "IPVS mode only"),
    _ignored("--ipvs-strict-arp", "IPVS mode only", boolean=True),
    _ignored("--ipvs-tcp-timeout", "IPVS mode only"),
    _ignored("--ipvs-tcpfin-timeout", "IPVS mode only"),
    _ignored("--ipvs-udp-timeout", "IPVS mode only"),
    _ignored("--windows-service", "Windows only", boolean=True),
    _ignored("--vmodule", "logs are structlog"),
    _ignored("--log-flush-frequency", "logs are written at once"),
    _ignored("--log-json-split-stream", "logs go to stderr", boolean=True),
    _ignored("--log-json-info-buffer-size", "logs are written at once"),
    _ignored("--log-text-split-stream", "logs go to stderr", boolean=True),
    _ignored("--log-text-info-buffer-size", "logs are written at once"),
)
"""kube-proxy's flags of the long-running proxy, and nftproxy's (``--sync-period``,
``--drift-check-period``)."""


def add_flags(parser: argparse.ArgumentParser, flags: tuple[Flag, ...]) -> None:
    """Put flags on parser; every value defaults to None (not given)."""
    for f in flags:
        kwargs: dict[str, Any] = {"dest": f.dest, "help": f.help, "default": None}
        if f.names == ("--node-ip",):
            kwargs.update(action="append", metavar=f.metavar)
        elif f.boolean:
            kwargs.update(nargs="?", const="true", metavar=f.metavar or "true|false")
        else:
            kwargs["metavar"] = f.metavar or "VALUE"
        parser.add_argument(*f.names, **kwargs)


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that describe the node and the proxy's settings."""
    add_flags(parser, NODE_FLAGS)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """kube-proxy's flags for the long-running proxy, and run's actions."""
    add_flags(parser, RUN_FLAGS)
    for name, help in (
        ("--dry-run", "run the whole loop, print every transaction instead of applying it"),
        ("--init-only", "set the conntrack sysctls and exit (1: one could not be set)"),
        ("--check-config", "validate --config and the flags, print the settings and exit"),
        ("--cleanup", "remove nftproxy's and kube-proxy's rules and exit"),
    ):
        parser.add_argument(
            name, nargs="?", const="true", default=None, metavar="true|false", help=help
        )
    parser.add_argument("--version", action="store_true", help="print the version and exit")


def is_on(args: argparse.Namespace, name: str) -> bool:
    """A boolean action flag of run (``--cleanup``, ``--cleanup=false``)."""
    value = getattr(args, name, None)
    return value is not None and parse_bool(value, f"--{name.replace('_', '-')}")


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings: the flags given, then --config's file, then the defaults. What is
    given but ignored is logged, one warning each."""
    given: dict[str, tuple[Any, str]] = {}
    warnings = []
    for f in (*NODE_FLAGS, *RUN_FLAGS):
        value = getattr(args, f.dest, None)
        if value is None:
            continue
        flag = f.names[-1]
        if f.ignored:
            warnings.append(f"{flag}: ignored ({f.ignored})")
        elif f.setting == "node_ips":
            given["node_ips"] = (tuple(value), flag)
        elif f.setting is not None:
            given[f.setting] = (f.convert(value, flag), flag)
    warnings += _proxy_mode(args)
    config = Path(args.config) if getattr(args, "config", None) else None
    _deprecated_ports(args, given, config)
    settings, more = resolve(given, config)
    for warning in [*warnings, *more]:
        log.logger().warning("setting ignored", detail=warning)
    return settings


def _proxy_mode(args: argparse.Namespace) -> list[str]:
    mode = getattr(args, "proxy_mode", None)
    if mode is None or mode in ("", "nftables"):
        return []
    if mode not in MODES:
        raise ConfigError(f"--proxy-mode: unknown proxy mode {mode!r} (want one of {MODES[1:]})")
    return [f"--proxy-mode: {mode!r} ignored; nftproxy programs nftables"]


def _deprecated_ports(
    args: argparse.Namespace, given: dict[str, tuple[Any, str]], config: Path | None
) -> None:
    """--healthz-port and --metrics-port, as kube-proxy takes them: only without a
    config file; 0 turns the server off, another port replaces the address's."""
    for what, default_host in (("healthz", "0.0.0.0"), ("metrics", "127.0.0.1")):
        port = getattr(args, f"{what}_port", None)
        if port is None or config is not None:
            continue
        flag = f"--{what}-port"
        number = _int(port, flag)
        name = f"{what}_bind_address"
        if number == 0:
            given[name] = ("", flag)
            continue
        address = str(given.get(name, (default_host, ""))[0])
        host = address.rpartition(":")[0] if address.count(":") == 1 or "]:" in address else address
        given[name] = (with_port(host, number), flag)


Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"
"""What ``add_subparsers`` returns: each command module adds its parser to it."""


class SubParser(argparse.ArgumentParser):
    """A subcommand's parser: no abbreviated flags (``--bind-address`` is never taken
    for ``--bind-address-hard-fail``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def add_filename_flag(parser: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    """``-f PATH``, repeatable: manifest files or folders."""
    parser.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        type=Path,
        required=required,
        metavar="PATH",
        help=help,
    )


def add_manifest_flags(parser: argparse.ArgumentParser) -> None:
    """Manifests in, and the node flags."""
    add_filename_flag(
        parser,
        required=True,
        help="manifest file or folder (YAML or JSON); repeatable; a Node named as "
        "this node among them gives its addresses, zone and podCIDRs, ServiceCIDRs "
        "the Service ranges",
    )
    add_node_flags(parser)
    parser.add_argument(
        "--strict", action="store_true", help="exit non-zero when any object is invalid"
    )


def add_netns_flag(parser: argparse.ArgumentParser) -> None:
    """Act inside a named network namespace instead of the current one."""
    parser.add_argument(
        "--netns", metavar="NAME", help="act in this network namespace (as with ip netns exec)"
    )


def add_checkpoint_flag(parser: argparse.ArgumentParser) -> None:
    """Where what was applied is kept for the next process (``apply``, ``run``)."""
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="where to keep what was applied, so that the next apply or restart need "
        "not read the kernel back (default /var/lib/nftproxy/checkpoint, with --netns "
        "checkpoint-NETNS; '' for none)",
    )


def checkpoint_of(args: argparse.Namespace) -> Path | None:
    """Where what was applied is kept (one file per network namespace); None: nowhere."""
    if args.checkpoint is not None:
        return Path(args.checkpoint) if args.checkpoint else None
    return checkpoint.default_path(args.netns)

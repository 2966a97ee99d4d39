"""XLIO transport rules (the ``use ...`` lines of libxlio.conf): parse, validate, format, match.

XLIO's rule parser is poisoned by one syntax error for the rest of the process (every later
``add_conf_rule`` fails), so pyxlio checks every rule here, in pure Python, and XLIO only ever
sees canonical text produced by :meth:`Rule.format`.

Grammar of one rule (one line)::

    use <transport> <role> <addr>:<port>[:<addr>:<port>]   [# comment]

* ``transport``: ``os``, ``vma``, ``sdp``, ``sa`` or ``*``.  ``xlio`` is accepted as an alias of
  ``vma`` and written as ``vma``, the only offload keyword libxlio 3.51.1's parser knows (pass
  ``offload_keyword="xlio"`` to :meth:`Rule.format` for a libxlio whose parser knows ``xlio``).
* ``role``: ``tcp_server``, ``tcp_client``, ``udp_sender``, ``udp_receiver``, ``udp_connect``.
* ``addr``: ``*`` or a dotted IPv4 address with an optional ``/prefix`` (0..32).
* ``port``: ``*``, ``N`` or ``N-M`` (0..65535, N <= M).

Decisions (where XLIO's own parser is looser, pyxlio is stricter, never the other way round):

* **Which pair is which.** The address pairs are positional and their meaning depends on the
  role, as the libxlio.conf shipped with XLIO documents it::

      tcp_server    local_addr:local_port
      udp_receiver  local_addr:local_port          (for multicast: the group and its port)
      udp_sender    remote_addr:remote_port        (the destination)
      tcp_client    remote_addr:remote_port[:local_addr:local_port]
      udp_connect   remote_addr:remote_port[:local_addr:local_port]

  :class:`Rule` therefore keeps ``local`` and ``remote`` by *meaning*, not by position, and
  :meth:`Rule.format` puts them in XLIO's order.  A tcp_client / udp_connect rule's first pair
  is the peer, and its optional second pair is the local end.
* **Second pair.** XLIO's grammar accepts a second pair after every role, but its matcher only
  consults it for tcp_client and udp_connect: for the other roles it would be silently dead.
  pyxlio rejects a second pair for tcp_server, udp_sender and udp_receiver.
* **Case.** Keywords are accepted in any case (``USE VMA UDP_RECEIVER``); output is lower case.
  XLIO's own lexer is case sensitive, so a hand-written file is only safe for XLIO as is when it
  is lower case: :meth:`ConfFile.format` with ``canonical=True`` rewrites every rule line.
* **Numbers.** XLIO's integer token is ``0|[1-9][0-9]*``: ``010`` is two numbers to it, so a
  leading zero in an octet, prefix or port is rejected.  A prefix over 32 (which XLIO silently
  clamps) is rejected.
* **Spacing.** Fields are separated by spaces or tabs; the ``addr:port[:addr:port]`` field has no
  spaces inside.  One trailing newline is allowed.  A trailing ``# comment`` is accepted and
  dropped (XLIO's lexer skips it too).  Other control characters (``\\r`` included) are errors.
* **Normalisation.** ``10.1.2.3/8`` becomes ``10.0.0.0/8`` (XLIO masks the rule address before
  comparing), ``/32`` is dropped, and ``5000-5000`` becomes ``5000``.  ``*`` and ``0.0.0.0/0``
  (or ``*`` and ``0-65535``) stay distinct, since XLIO treats rules without any address or port
  constraint specially when it decides on offload per program.

Order of evaluation: XLIO walks each role's rule list and the first matching rule wins.  A
configuration file's rules are in file order, but ``add_conf_rule`` puts its rule at the *head*
of the list: the most recently added rule wins.  :func:`first_match` takes the rules in
evaluation order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Union

__all__ = [
    "OFFLOAD_KEYWORD",
    "ConfFile",
    "Endpoint",
    "Role",
    "Rule",
    "RuleSyntaxError",
    "Transport",
    "coerce",
    "first_match",
    "validate",
]

#: The offload keyword written by :meth:`Rule.format` (libxlio 3.51.1's parser knows ``vma``).
OFFLOAD_KEYWORD = "vma"
_OFFLOAD_KEYWORDS = ("vma", "xlio")


class Transport(str, Enum):
    """Where a matching socket goes.  ``OFFLOAD`` is an alias of ``VMA`` (XLIO offload).

    Construction is case insensitive and accepts ``"xlio"`` for ``VMA``:
    ``Transport("XLIO") is Transport.VMA``.
    """

    OS = "os"
    VMA = "vma"
    SDP = "sdp"
    SA = "sa"
    ANY = "*"
    OFFLOAD = "vma"

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def _missing_(cls, value: object) -> Transport | None:
        if isinstance(value, str):
            wanted = value.lower()
            if wanted == "xlio":
                return cls.VMA
            for member in cls:
                if member.value == wanted:
                    return member
        return None


class Role(str, Enum):
    """The kind of socket a rule applies to.  Construction is case insensitive."""

    TCP_SERVER = "tcp_server"
    TCP_CLIENT = "tcp_client"
    UDP_SENDER = "udp_sender"
    UDP_RECEIVER = "udp_receiver"
    UDP_CONNECT = "udp_connect"

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def _missing_(cls, value: object) -> Role | None:
        if isinstance(value, str):
            wanted = value.lower()
            for member in cls:
                if member.value == wanted:
                    return member
        return None


#: Roles whose (only) pair is the local end.
_LOCAL_ROLES = frozenset({Role.TCP_SERVER, Role.UDP_RECEIVER})
#: Roles that take an optional second (local) pair after the remote one.
_TWO_PAIR_ROLES = frozenset({Role.TCP_CLIENT, Role.UDP_CONNECT})

_TRANSPORT_WORDS = "os, vma, xlio, sdp, sa, *"
_ROLE_WORDS = ", ".join(r.value for r in Role)
_SHAPE = "use <transport> <role> <addr>:<port>[:<addr>:<port>]"

_FIELD_RE = re.compile(r"[^ \t]+")
_BLANK_RE = re.compile(r"[ \t]")
_BAD_CHAR_RE = re.compile(r"[^ \t!-~]")
_IPV4_RE = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+)\Z")
_NUMBER_RE = re.compile(r"[0-9]+\Z")
_PORTS_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")

_SHOW_MAX = 60

PortRange = tuple[int, int]
Address = tuple[str, int]
PortSpec = Union[int, PortRange, str, None]


def _show(text: str) -> str:
    """repr() of a token, shortened for messages."""
    if len(text) > _SHOW_MAX:
        return repr(text[: _SHOW_MAX - 3] + "...")
    return repr(text)


class RuleSyntaxError(ValueError):
    """A transport rule (or a ``use`` line of a configuration file) is malformed.

    Attributes:
        reason: what is wrong, naming the bad token.
        token: the offending token ("" when a field is missing).
        column: 1-based column of the token in ``line_text`` (where the missing field should be).
        line_text: the text being parsed (the whole line, as given).
        lineno: 1-based line number within a file, or None for a single rule.
    """

    def __init__(
        self,
        reason: str,
        token: str,
        column: int,
        line_text: str,
        lineno: int | None = None,
    ) -> None:
        self.reason = reason
        self.token = token
        self.column = column
        self.line_text = line_text
        self.lineno = lineno
        where = f"column {column}" if lineno is None else f"line {lineno}, column {column}"
        shown = line_text.rstrip("\n")
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{where}: {reason} in rule {shown!r}")

    def __reduce__(
        self,
    ) -> tuple[type[RuleSyntaxError], tuple[str, str, int, str, int | None]]:
        return (type(self), (self.reason, self.token, self.column, self.line_text, self.lineno))


#: Builds the RuleSyntaxError for (reason, token, 0-based offset in the parsed text).
_Fail = Callable[[str, str, int], RuleSyntaxError]


class _Bad(Exception):
    """Internal: a field's value is wrong (the caller knows where the field is)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _number(text: str, maximum: int, what: str) -> int:
    """Parse one of XLIO's integer tokens (no sign, no leading zero) bounded by ``maximum``."""
    if not _NUMBER_RE.match(text):
        raise _Bad(f"{what} {_show(text)} is not a number")
    if len(text) > 1 and text[0] == "0":
        raise _Bad(f"{what} {_show(text)} has a leading zero (XLIO would read two numbers)")
    if len(text) > len(str(maximum)) or int(text) > maximum:
        raise _Bad(f"{what} {_show(text)} is out of range 0..{maximum}")
    return int(text)


def _mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def _dotted(value: int) -> str:
    return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"


def _parse_network(text: str) -> tuple[int, int]:
    """``a.b.c.d[/p]`` -> (masked address as int, prefix length)."""
    addr, slash, prefix_text = text.partition("/")
    found = _IPV4_RE.match(addr)
    if not found:
        raise _Bad("expected a dotted IPv4 address a.b.c.d[/prefix] or '*'")
    value = 0
    for octet in found.groups():
        value = (value << 8) | _number(octet, 255, "octet")
    prefix = 32
    if slash:
        if not prefix_text:
            raise _Bad("missing prefix length after '/'")
        prefix = _number(prefix_text, 32, "prefix length")
    return value & _mask(prefix), prefix


def _format_network(value: int, prefix: int) -> str:
    return _dotted(value) if prefix == 32 else f"{_dotted(value)}/{prefix}"


def _parse_ports(text: str) -> PortRange | None:
    if text == "*":
        return None
    found = _PORTS_RE.match(text)
    if not found:
        raise _Bad(f"bad port {_show(text)} (expected N, N-M or '*')")
    if found.group(2) is None:
        low = high = _number(found.group(1), 65535, "port")
    else:
        try:
            low = _number(found.group(1), 65535, "port")
            high = _number(found.group(2), 65535, "port")
        except _Bad as exc:
            raise _Bad(f"bad port range {_show(text)}: {exc.reason}") from None
    if low > high:
        raise _Bad(f"reversed port range {_show(text)}: {low} > {high}")
    return (low, high)


def _check_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    return value


def _check_port(value: object, what: str = "port") -> int:
    port = _check_int(value, what)
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} {port} is out of range 0..65535")
    return port


def _query_ip(ip: object) -> int | None:
    """A socket's IP for matching: IPv4 as int, IPv4-mapped IPv6 as its IPv4, other IPv6 None."""
    if not isinstance(ip, str):
        raise TypeError(f"ip must be a str, not {type(ip).__name__}")
    if ip == "":
        return 0  # the sockets API's INADDR_ANY
    import ipaddress

    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(f"{ip!r} is not an IP address") from None
    if isinstance(parsed, ipaddress.IPv4Address):
        return int(parsed)
    mapped = parsed.ipv4_mapped
    return None if mapped is None else int(mapped)


def _query_pair(value: object, name: str) -> Address | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be an (ip, port) tuple or None, not {value!r}")
    ip, port = value
    if not isinstance(ip, str):
        raise TypeError(f"{name} ip must be a str, not {type(ip).__name__}")
    return (ip, _check_port(port, f"{name} port"))


def _coerce_transport(value: object) -> Transport:
    if isinstance(value, Transport):
        return value
    if isinstance(value, str):
        try:
            return Transport(value)
        except ValueError:
            raise ValueError(
                f"unknown transport {_show(value)} (expected one of {_TRANSPORT_WORDS})"
            ) from None
    raise TypeError(f"transport must be a Transport or str, not {type(value).__name__}")


def _coerce_role(value: object) -> Role:
    if isinstance(value, Role):
        return value
    if isinstance(value, str):
        try:
            return Role(value)
        except ValueError:
            raise ValueError(
                f"unknown role {_show(value)} (expected one of {_ROLE_WORDS})"
            ) from None
    raise TypeError(f"role must be a Role or str, not {type(value).__name__}")


@dataclass(frozen=True)
class Endpoint:
    """One ``addr:port`` pattern of a rule.

    Attributes:
        network: None for ``*`` (any address), else ``"a.b.c.d"`` or ``"a.b.c.d/p"``, normalised
            (host bits cleared, ``/32`` dropped).
        ports: None for ``*`` (any port), else an inclusive ``(first, last)`` range.

    ``Endpoint()`` is ``*:*``.  The constructor validates and normalises; it raises ValueError
    for a bad value and TypeError for a wrong type.
    """

    network: str | None = None
    ports: PortRange | None = None
    _addr: int = field(default=0, init=False, repr=False, compare=False)
    _prefix: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        network = self.network
        if network is not None:
            if not isinstance(network, str):
                raise TypeError(f"network must be a str or None, not {type(network).__name__}")
            if network == "*":
                object.__setattr__(self, "network", None)
            else:
                try:
                    value, prefix = _parse_network(network)
                except _Bad as exc:
                    raise ValueError(f"bad network {_show(network)}: {exc.reason}") from None
                object.__setattr__(self, "network", _format_network(value, prefix))
                object.__setattr__(self, "_addr", value)
                object.__setattr__(self, "_prefix", prefix)
        ports = self.ports
        if ports is not None:
            if not isinstance(ports, tuple) or len(ports) != 2:
                raise TypeError(f"ports must be a (first, last) tuple or None, not {ports!r}")
            low = _check_port(ports[0])
            high = _check_port(ports[1])
            if low > high:
                raise ValueError(f"reversed port range ({low}, {high})")
            object.__setattr__(self, "ports", (low, high))

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse one ``addr:port`` pair, e.g. ``"239.1.1.0/24:5000-5010"`` or ``"*:*"``.

        Raises RuleSyntaxError (a ValueError) naming the bad part and its column.
        """
        if not isinstance(text, str):
            raise TypeError(f"endpoint text must be a str, not {type(text).__name__}")
        body = text.rstrip(" \t\n")
        start = len(body) - len(body.lstrip(" \t"))
        body = body[start:]

        def fail(reason: str, token: str, offset: int) -> RuleSyntaxError:
            return RuleSyntaxError(reason, token, start + offset + 1, text)

        bad = _BAD_CHAR_RE.search(body) or _BLANK_RE.search(body)
        if bad:
            char = bad.group()
            raise fail(f"unexpected character {char!r}", char, bad.start())
        parts = body.split(":")
        if len(parts) != 2:
            if len(parts) == 1:
                raise fail(f"{_show(body)} is not an <addr>:<port> pair", body, 0)
            extra = body[len(parts[0]) + len(parts[1]) + 1 :]
            raise fail(f"unexpected {_show(extra)} after the port", extra, len(body) - len(extra))
        return _endpoint_from(parts[0], parts[1], 0, len(parts[0]) + 1, fail)

    @classmethod
    def make(
        cls,
        ip: str | None = None,
        port: PortSpec = None,
        prefix: int | None = None,
    ) -> Endpoint:
        """Build an endpoint from parts.

        Args:
            ip: ``None`` or ``"*"`` for any address, else ``"a.b.c.d"`` (``"a.b.c.d/p"`` too).
            port: ``None`` or ``"*"`` for any port, an int, an inclusive ``(first, last)`` tuple,
                or a string ``"N"`` / ``"N-M"``.
            prefix: a prefix length 0..32 for ``ip`` (not with a ``/p`` already in ``ip``).
        """
        if ip is not None and not isinstance(ip, str):
            raise TypeError(f"ip must be a str or None, not {type(ip).__name__}")
        if ip == "*":
            ip = None
        if prefix is not None:
            _check_int(prefix, "prefix")
            if ip is None:
                raise ValueError("prefix needs an ip")
            if "/" in ip:
                raise ValueError(f"ip {ip!r} already has a prefix; do not pass prefix= too")
            if not 0 <= prefix <= 32:
                raise ValueError(f"prefix {prefix} is out of range 0..32")
            ip = f"{ip}/{prefix}"
        ports: PortRange | None
        if port is None:
            ports = None
        elif isinstance(port, str):
            try:
                ports = _parse_ports(port)
            except _Bad as exc:
                raise ValueError(exc.reason) from None
        elif isinstance(port, tuple):
            ports = port
        else:
            ports = (_check_port(port), _check_port(port))
        return cls(ip, ports)

    @property
    def is_wildcard(self) -> bool:
        """True for ``*:*`` (no address and no port constraint)."""
        return self.network is None and self.ports is None

    def __str__(self) -> str:
        addr = "*" if self.network is None else self.network
        if self.ports is None:
            port = "*"
        elif self.ports[0] == self.ports[1]:
            port = str(self.ports[0])
        else:
            port = f"{self.ports[0]}-{self.ports[1]}"
        return f"{addr}:{port}"

    def matches(self, ip: str, port: int) -> bool:
        """True if a socket address ``(ip, port)`` falls in this pattern.

        ``ip`` is a dotted IPv4 string ("" means 0.0.0.0); an IPv4-mapped IPv6 address
        (``::ffff:a.b.c.d``) counts as its IPv4 address, and any other IPv6 address matches
        only an address wildcard, as in XLIO.
        """
        value = _query_ip(ip)
        number = _check_port(port)
        if self.ports is not None and not self.ports[0] <= number <= self.ports[1]:
            return False
        if self.network is None:
            return True
        return value is not None and (value & _mask(self._prefix)) == self._addr


def _endpoint_from(
    addr_text: str,
    port_text: str,
    addr_offset: int,
    port_offset: int,
    fail: _Fail,
) -> Endpoint:
    """Build an Endpoint from the two textual parts, raising through ``fail`` on error."""
    network: str | None = None
    if addr_text == "":
        raise fail("missing address before ':' (expected a.b.c.d[/prefix] or '*')", "", addr_offset)
    if addr_text != "*":
        try:
            value, prefix = _parse_network(addr_text)
        except _Bad as exc:
            raise fail(
                f"bad address {_show(addr_text)}: {exc.reason}", addr_text, addr_offset
            ) from None
        network = _format_network(value, prefix)
    if port_text == "":
        raise fail("missing port after ':' (expected N, N-M or '*')", "", port_offset)
    try:
        ports = _parse_ports(port_text)
    except _Bad as exc:
        raise fail(exc.reason, port_text, port_offset) from None
    return Endpoint(network, ports)


def _split_comment(text: str) -> tuple[str, str]:
    """Split a line (without its newline) into the rule body and its ``#`` comment."""
    hash_at = text.find("#")
    if hash_at < 0:
        return text, ""
    return text[:hash_at], text[hash_at:]


def _parse_rule(text: str, lineno: int | None = None) -> Rule:
    """Parse one rule; ``lineno`` is set when the rule is a line of a file."""
    if not isinstance(text, str):
        raise TypeError(f"a rule must be a str, not {type(text).__name__}")

    def fail(reason: str, token: str, offset: int) -> RuleSyntaxError:
        return RuleSyntaxError(reason, token, offset + 1, text, lineno)

    line = text[:-1] if text.endswith("\n") else text
    newline_at = line.find("\n")
    if newline_at >= 0:
        raise fail(
            "a rule is a single line, found a line break (use ConfFile for a file)",
            "\n",
            newline_at,
        )
    body, _comment = _split_comment(line)
    bad = _BAD_CHAR_RE.search(body)
    if bad:
        char = bad.group()
        raise fail(f"unexpected character {char!r}", char, bad.start())
    fields = [(found.start(), found.group()) for found in _FIELD_RE.finditer(body)]
    end = len(body.rstrip(" \t"))

    if not fields:
        raise fail(f"empty rule (expected {_SHAPE!r})", "", end)
    start, word = fields[0]
    if word.lower() != "use":
        raise fail(f"expected 'use', found {_show(word)}", word, start)

    if len(fields) < 2:
        raise fail(f"missing transport after 'use' (one of {_TRANSPORT_WORDS})", "", end)
    start, word = fields[1]
    try:
        transport = Transport(word)
    except ValueError:
        raise fail(
            f"unknown transport {_show(word)} (expected one of {_TRANSPORT_WORDS})", word, start
        ) from None

    if len(fields) < 3:
        raise fail(f"missing role after {fields[1][1]!r} (one of {_ROLE_WORDS})", "", end)
    start, word = fields[2]
    try:
        role = Role(word)
    except ValueError:
        hint = ""
        if word.lower() in ("tcp", "udp"):
            hint = f"; XLIO's roles name the side too, e.g. {word.lower()}_"
            hint += "server" if word.lower() == "tcp" else "receiver"
        raise fail(
            f"unknown role {_show(word)} (expected one of {_ROLE_WORDS}){hint}", word, start
        ) from None

    if len(fields) < 4:
        raise fail(f"missing <addr>:<port> after {fields[2][1]!r}", "", end)
    if len(fields) > 4:
        start, word = fields[4]
        raise fail(
            f"unexpected extra field {_show(word)} (a rule is {_SHAPE!r}, "
            "with no spaces inside the address part)",
            word,
            start,
        )
    spec_start, spec = fields[3]
    first, second = _parse_pairs(spec, spec_start, role, fail)
    if role in _LOCAL_ROLES:
        return Rule(transport, role, local=first)
    return Rule(transport, role, local=second, remote=first)


def _parse_pairs(
    spec: str, spec_start: int, role: Role, fail: _Fail
) -> tuple[Endpoint, Endpoint | None]:
    """Parse ``addr:port[:addr:port]`` into (first pair, second pair or None)."""
    offsets: list[int] = []
    parts = spec.split(":")
    position = spec_start
    for part in parts:
        offsets.append(position)
        position += len(part) + 1
    if len(parts) == 1:
        raise fail(
            f"{_show(spec)} is not an <addr>:<port> pair (missing ':<port>')", spec, spec_start
        )
    if len(parts) > 4:
        extra = spec[offsets[4] - 1 - spec_start :]
        raise fail(
            f"unexpected {_show(extra)}: a rule has at most two <addr>:<port> pairs",
            extra,
            offsets[4] - 1,
        )
    first = _endpoint_from(parts[0], parts[1], offsets[0], offsets[1], fail)
    if len(parts) == 2:
        return first, None
    second_text = spec[offsets[2] - spec_start :]
    if role not in _TWO_PAIR_ROLES:
        raise fail(
            f"second <addr>:<port> pair {_show(second_text)} is only allowed for tcp_client and "
            f"udp_connect (XLIO never consults it for {role.value})",
            second_text,
            offsets[2],
        )
    if len(parts) == 3:
        raise fail(
            f"incomplete second pair {_show(second_text)} (missing ':<port>')",
            second_text,
            offsets[2],
        )
    return first, _endpoint_from(parts[2], parts[3], offsets[2], offsets[3], fail)


EndpointSpec = Union[Endpoint, str, None]


def _coerce_endpoint(value: object, name: str) -> Endpoint | None:
    if value is None or isinstance(value, Endpoint):
        return value
    if isinstance(value, str):
        return Endpoint.parse(value)
    raise TypeError(
        f"{name} must be an Endpoint, an 'addr:port' str or None, not {type(value).__name__}"
    )


@dataclass(frozen=True)
class Rule:
    """One transport rule.

    Attributes:
        transport: where matching sockets go.
        role: the kind of socket the rule applies to.
        local: the local-end pattern: required for tcp_server and udp_receiver, optional for
            tcp_client and udp_connect (their second pair), absent (None) for udp_sender.
        remote: the peer/destination pattern: required for udp_sender, tcp_client and
            udp_connect (their first pair), absent (None) for tcp_server and udp_receiver.

    The constructor accepts ``str`` for transport and role (case insensitive, ``"xlio"`` too)
    and checks which pairs the role allows (ValueError) and their types (TypeError).
    ``str(rule)`` is the canonical text, without newline; ``Rule.parse(str(rule)) == rule``.
    """

    transport: Transport
    role: Role
    local: Endpoint | None = None
    remote: Endpoint | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "transport", _coerce_transport(self.transport))
        role = _coerce_role(self.role)
        object.__setattr__(self, "role", role)
        for name in ("local", "remote"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Endpoint):
                raise TypeError(f"{name} must be an Endpoint or None, not {type(value).__name__}")
        if role in _LOCAL_ROLES:
            if self.local is None:
                raise ValueError(
                    f"a {role.value} rule matches the local address: local is required"
                )
            if self.remote is not None:
                raise ValueError(
                    f"a {role.value} rule has no remote pair (XLIO matches {role.value} sockets "
                    "on their local address only)"
                )
        else:
            if role is Role.UDP_SENDER and self.local is not None:
                raise ValueError(
                    "a udp_sender rule has no local pair (XLIO matches udp_sender sockets on "
                    "the destination address only): give the destination as remote"
                )
            if self.remote is None:
                raise ValueError(
                    f"a {role.value} rule matches the remote (destination) address: "
                    "remote is required"
                )

    @classmethod
    def parse(cls, text: str) -> Rule:
        """Parse one rule (an optional trailing newline is allowed).

        Raises RuleSyntaxError (a ValueError) naming the bad token and its column.
        """
        return _parse_rule(text)

    @classmethod
    def make(
        cls,
        *,
        transport: Transport | str,
        role: Role | str,
        local: EndpointSpec = None,
        remote: EndpointSpec = None,
        ip: str | None = None,
        port: PortSpec = None,
        prefix: int | None = None,
    ) -> Rule:
        """Build a rule from keywords.

        Args:
            transport: a Transport or its keyword (``"os"``, ``"vma"``/``"xlio"``, ...).
            role: a Role or its keyword.
            local: the local end, as an Endpoint or ``"addr:port"`` text.
            remote: the peer/destination, as an Endpoint or ``"addr:port"`` text.
            ip, port, prefix: shorthand for the role's *primary* pair, the first one in the
                rule text: the local end for tcp_server/udp_receiver, the remote end for
                udp_sender/tcp_client/udp_connect.  See :meth:`Endpoint.make` for their forms.
                Not together with the explicit keyword for that same pair (TypeError).

        When the primary pair is given by neither form, it is ``*:*``.  Example::

            Rule.make(transport="os", role="udp_receiver", ip="239.1.1.1", port=5000)
            Rule.make(transport="vma", role="tcp_client", remote="10.0.0.0/8:*", local="*:*")
        """
        the_transport = _coerce_transport(transport)
        the_role = _coerce_role(role)
        the_local = _coerce_endpoint(local, "local")
        the_remote = _coerce_endpoint(remote, "remote")
        if ip is not None or port is not None or prefix is not None:
            primary = Endpoint.make(ip, port, prefix)
            if the_role in _LOCAL_ROLES:
                if the_local is not None:
                    raise TypeError("give the local pair either as local= or as ip/port/prefix")
                the_local = primary
            else:
                if the_remote is not None:
                    raise TypeError("give the remote pair either as remote= or as ip/port/prefix")
                the_remote = primary
        if the_role in _LOCAL_ROLES:
            if the_local is None:
                the_local = Endpoint()
        elif the_remote is None:
            the_remote = Endpoint()
        return cls(the_transport, the_role, the_local, the_remote)

    @property
    def pairs(self) -> tuple[Endpoint, ...]:
        """The address pairs in rule-text order (one or two)."""
        if self.role in _LOCAL_ROLES:
            assert self.local is not None
            return (self.local,)
        assert self.remote is not None
        return (self.remote,) if self.local is None else (self.remote, self.local)

    def format(self, *, offload_keyword: str = OFFLOAD_KEYWORD) -> str:
        """The canonical text of the rule, lower case, single spaces, no newline.

        ``offload_keyword`` is the word written for ``Transport.VMA``: ``"vma"`` (the default,
        for libxlio 3.51.1) or ``"xlio"``.
        """
        if offload_keyword not in _OFFLOAD_KEYWORDS:
            raise ValueError(f"offload_keyword must be 'vma' or 'xlio', not {offload_keyword!r}")
        word = offload_keyword if self.transport is Transport.VMA else self.transport.value
        pairs = ":".join(str(pair) for pair in self.pairs)
        return f"use {word} {self.role.value} {pairs}"

    def __str__(self) -> str:
        return self.format()

    def matches(
        self,
        role: Role | str,
        local: Address | None = None,
        remote: Address | None = None,
    ) -> bool:
        """True if this rule applies to a socket of ``role`` with these addresses.

        ``local`` and ``remote`` are ``(ip, port)`` tuples.  The address a role is matched on
        first must be given (ValueError otherwise): ``local`` for tcp_server/udp_receiver,
        ``remote`` for udp_sender/tcp_client/udp_connect.  As in XLIO, a rule's optional local
        pair (tcp_client/udp_connect) is skipped when ``local`` is None, and a ``remote`` given
        for tcp_server/udp_receiver is ignored.  The transport is not considered here
        (see :func:`first_match`).
        """
        the_role, the_local, the_remote = _query(role, local, remote)
        return self._matches(the_role, the_local, the_remote)

    def _matches(self, role: Role, local: Address | None, remote: Address | None) -> bool:
        if role is not self.role:
            return False
        if self.local is not None and local is not None and not self.local.matches(*local):
            return False
        return not (
            self.remote is not None and remote is not None and not self.remote.matches(*remote)
        )


def _query(
    role: object, local: object, remote: object
) -> tuple[Role, Address | None, Address | None]:
    """Check a match query; the role's primary address is required."""
    the_role = _coerce_role(role)
    the_local = _query_pair(local, "local")
    the_remote = _query_pair(remote, "remote")
    if the_role in _LOCAL_ROLES:
        if the_local is None:
            raise ValueError(f"matching a {the_role.value} socket needs local=(ip, port)")
    elif the_remote is None:
        raise ValueError(f"matching a {the_role.value} socket needs remote=(ip, port)")
    return the_role, the_local, the_remote


def validate(text: str) -> Rule:
    """Check one rule and return it parsed (same as :meth:`Rule.parse`).

    Raises RuleSyntaxError (a ValueError) naming the bad token and its column.
    """
    return _parse_rule(text)


def coerce(rule: Rule | str) -> Rule:
    """A Rule as is, or a str parsed as one; TypeError naming the type for anything else."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        return _parse_rule(rule)
    raise TypeError(f"expected a Rule or a str, not {type(rule).__name__}")


def first_match(
    rules: Iterable[Rule | str],
    role: Role | str,
    local: Address | None = None,
    remote: Address | None = None,
) -> Rule | None:
    """The rule XLIO would apply to a socket, or None (XLIO's default then: offload).

    ``rules`` must be in XLIO's evaluation order, where the first matching rule wins: file
    order for a libxlio.conf, but *newest first* for rules added at run time, because
    ``add_conf_rule`` puts each rule at the head of XLIO's list (the most recently added rule
    wins).  Like XLIO, rules whose transport is ``sdp`` or ``sa`` never match (XLIO asks on
    behalf of its own transport only) and are skipped.  ``local``/``remote`` are as in
    :meth:`Rule.matches`.  ``application-id`` sections of a file are not modelled.
    """
    the_role, the_local, the_remote = _query(role, local, remote)
    for item in rules:
        rule = coerce(item)
        if rule.transport in (Transport.SDP, Transport.SA):
            continue
        if rule._matches(the_role, the_local, the_remote):
            return rule
    return None


@dataclass
class _Line:
    """One line of a configuration file, with its line ending (if any)."""

    text: str
    rule: Rule | None = None
    comment: str = ""


def _split_lines(text: str) -> list[str]:
    """Split on ``\\n`` only, keeping the ends (str.splitlines also splits on \\r, \\f, ...)."""
    pieces = text.split("\n")
    lines = [piece + "\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


def _is_rule_line(line: str) -> bool:
    body, _comment = _split_comment(line.rstrip("\n"))
    first = _FIELD_RE.search(body)
    return first is not None and first.group().lower() == "use"


class ConfFile:
    """A libxlio.conf kept line by line.

    Every line is kept in order: comments, blank lines, transport rules, and any other
    statement (``application-id``, ``log``, ...) as opaque text.  Lines that were not edited
    are written back byte for byte, so ``ConfFile.parse(t).format() == t``.  A line whose first
    word is ``use`` (any case) must be a valid rule: RuleSyntaxError, with ``lineno``, if not.

    :attr:`rules` lists the rules in file order, which is XLIO's evaluation order for a file
    (first match wins); ``application-id`` sections are kept but not interpreted.
    """

    def __init__(self) -> None:
        """An empty file; see :meth:`parse` and :meth:`read`."""
        self._lines: list[_Line] = []

    @classmethod
    def parse(cls, text: str) -> ConfFile:
        """Parse the text of a whole file."""
        if not isinstance(text, str):
            raise TypeError(f"file text must be a str, not {type(text).__name__}")
        conf = cls()
        for lineno, line in enumerate(_split_lines(text), start=1):
            if _is_rule_line(line):
                rule = _parse_rule(line, lineno)
                _body, comment = _split_comment(line.rstrip("\n"))
                conf._lines.append(_Line(line, rule, comment))
            else:
                conf._lines.append(_Line(line))
        return conf

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ConfFile:
        """Read and parse a file (bytes that are not UTF-8 survive a round trip unchanged)."""
        data = Path(path).read_bytes()
        return cls.parse(data.decode("utf-8", "surrogateescape"))

    @property
    def rules(self) -> list[Rule]:
        """The rules, in file order (a new list: edit through append/insert/remove)."""
        return [line.rule for line in self._lines if line.rule is not None]

    @property
    def lines(self) -> tuple[str, ...]:
        """The text of every line, with line endings, as :meth:`format` would write them."""
        return tuple(self._rendered(canonical=False, offload_keyword=OFFLOAD_KEYWORD))

    def append(self, rule: Rule | str) -> None:
        """Add a rule as the last line of the file (so it is evaluated after all others)."""
        the_rule = coerce(rule)
        self._lines.append(_Line(the_rule.format() + "\n", the_rule))

    def insert(self, index: int, rule: Rule | str) -> None:
        """Insert a rule so that it becomes ``rules[index]`` (list.insert semantics).

        The new line goes just before the line of the rule now at ``index``; an index at or
        past the end appends to the file.
        """
        _check_int(index, "index")
        the_rule = coerce(rule)
        positions = [i for i, line in enumerate(self._lines) if line.rule is not None]
        if index < 0:
            index = max(0, index + len(positions))
        new_line = _Line(the_rule.format() + "\n", the_rule)
        if index >= len(positions):
            self._lines.append(new_line)
        else:
            self._lines.insert(positions[index], new_line)

    def remove(self, rule: Rule | str) -> None:
        """Remove the line of the first rule equal to ``rule``; ValueError if there is none."""
        the_rule = coerce(rule)
        for i, line in enumerate(self._lines):
            if line.rule == the_rule:
                del self._lines[i]
                return
        raise ValueError(f"rule not in file: {the_rule}")

    def _rendered(self, *, canonical: bool, offload_keyword: str) -> list[str]:
        out: list[str] = []
        last = len(self._lines) - 1
        for i, line in enumerate(self._lines):
            text = line.text
            if canonical and line.rule is not None:
                ending = "\n" if text.endswith("\n") else ""
                comment = f" {line.comment}" if line.comment else ""
                text = line.rule.format(offload_keyword=offload_keyword) + comment + ending
            if i < last and not text.endswith("\n"):
                text += "\n"  # the old last line, now followed by appended rules
            out.append(text)
        return out

    def format(self, *, canonical: bool = False, offload_keyword: str = OFFLOAD_KEYWORD) -> str:
        """The file's text.

        By default unedited lines are reproduced byte for byte.  With ``canonical=True`` every
        rule line is rewritten in canonical form (lower case, ``vma`` for ``xlio``, single
        spaces; a trailing comment is kept), which XLIO's case-sensitive parser always accepts.
        """
        if offload_keyword not in _OFFLOAD_KEYWORDS:
            raise ValueError(f"offload_keyword must be 'vma' or 'xlio', not {offload_keyword!r}")
        return "".join(self._rendered(canonical=canonical, offload_keyword=offload_keyword))

    def write(
        self,
        path: str | os.PathLike[str],
        *,
        canonical: bool = False,
        offload_keyword: str = OFFLOAD_KEYWORD,
    ) -> None:
        """Write the file atomically: a temporary file in the same directory, then os.replace.

        An existing file's permission bits are kept.  Arguments as for :meth:`format`.
        """
        data = self.format(canonical=canonical, offload_keyword=offload_keyword).encode(
            "utf-8", "surrogateescape"
        )
        target = os.fspath(path)
        directory = os.path.dirname(target) or "."
        base = os.path.basename(target)
        try:
            keep_mode: int | None = os.stat(target).st_mode & 0o7777
        except FileNotFoundError:
            keep_mode = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for attempt in range(1000):
            temp = os.path.join(directory, f".{base}.{os.getpid()}.{attempt}.tmp")
            try:
                fd = os.open(temp, flags, 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free temporary name next to {target!r}")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if keep_mode is not None:
                os.chmod(temp, keep_mode)
            os.replace(temp, target)
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    def __repr__(self) -> str:
        return f"<ConfFile: {len(self._lines)} lines, {len(self.rules)} rules>"

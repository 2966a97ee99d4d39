"""Tests for pyxlio.rules: the libxlio.conf transport-rule grammar (pure Python)."""

from __future__ import annotations

import ipaddress
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyxlio import rules as rules_module
from pyxlio.rules import (
    ConfFile,
    Endpoint,
    Role,
    Rule,
    RuleSyntaxError,
    Transport,
    coerce,
    first_match,
    validate,
)

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    HAVE_HYPOTHESIS = False

needs_hypothesis = pytest.mark.skipif(not HAVE_HYPOTHESIS, reason="hypothesis is not installed")

# An independent description of what libxlio 3.51.1's parser accepts, in the form pyxlio
# writes it: lower-case keywords, XLIO's integer token (0 or no leading zero), single spaces.
_INT = r"(?:0|[1-9][0-9]*)"
_ADDR = rf"(?:\*|{_INT}\.{_INT}\.{_INT}\.{_INT}(?:/{_INT})?)"
_PORT = rf"(?:\*|{_INT}(?:-{_INT})?)"
_PAIR = rf"{_ADDR}:{_PORT}"
XLIO_CANONICAL = re.compile(
    rf"use (?:os|vma|sdp|sa|\*) "
    rf"(?:(?:tcp_server|udp_receiver|udp_sender) {_PAIR}"
    rf"|(?:tcp_client|udp_connect) {_PAIR}(?::{_PAIR})?)"
)

ALL_ROLES = ["tcp_server", "tcp_client", "udp_sender", "udp_receiver", "udp_connect"]


def syntax_error(text: str) -> RuleSyntaxError:
    with pytest.raises(RuleSyntaxError) as info:
        Rule.parse(text)
    return info.value


# --------------------------------------------------------------------------------------------
# Enums


def test_transport_values_and_alias() -> None:
    assert [t.value for t in Transport] == ["os", "vma", "sdp", "sa", "*"]
    assert Transport["OFFLOAD"] is Transport.VMA  # an alias, not a sixth member
    assert len(Transport) == 5
    assert Transport("xlio") is Transport.VMA
    assert Transport("XLIO") is Transport.VMA
    assert Transport("Os") is Transport.OS
    assert Transport("*") is Transport.ANY
    assert str(Transport.SDP) == "sdp"
    with pytest.raises(ValueError):
        Transport("offload")  # a member name, not a keyword
    with pytest.raises(ValueError):
        Transport("tcp")


def test_role_values_case_insensitive() -> None:
    assert [r.value for r in Role] == ALL_ROLES
    assert Role("UDP_RECEIVER") is Role.UDP_RECEIVER
    assert str(Role.TCP_CLIENT) == "tcp_client"
    with pytest.raises(ValueError):
        Role("udp")


# --------------------------------------------------------------------------------------------
# Good tokens


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("os", Transport.OS),
        ("vma", Transport.VMA),
        ("xlio", Transport.VMA),
        ("sdp", Transport.SDP),
        ("sa", Transport.SA),
        ("*", Transport.ANY),
    ],
)
def test_every_transport(word: str, expected: Transport) -> None:
    rule = Rule.parse(f"use {word} udp_receiver *:5000")
    assert rule.transport is expected
    written = "vma" if word == "xlio" else word
    assert str(rule) == f"use {written} udp_receiver *:5000"


@pytest.mark.parametrize("role", ALL_ROLES)
def test_every_role(role: str) -> None:
    rule = Rule.parse(f"use os {role} 10.0.0.1:80")
    assert rule.role is Role(role)
    assert str(rule) == f"use os {role} 10.0.0.1:80"
    primary = rule.local if role in ("tcp_server", "udp_receiver") else rule.remote
    assert primary == Endpoint("10.0.0.1", (80, 80))


@pytest.mark.parametrize(
    ("addr", "network", "written"),
    [
        ("*", None, "*"),
        ("0.0.0.0", "0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255", "255.255.255.255"),
        ("239.1.1.1", "239.1.1.1", "239.1.1.1"),
        ("239.1.1.1/32", "239.1.1.1", "239.1.1.1"),
        ("10.1.2.3/8", "10.0.0.0/8", "10.0.0.0/8"),
        ("192.168.7.9/24", "192.168.7.0/24", "192.168.7.0/24"),
        ("1.2.3.4/0", "0.0.0.0/0", "0.0.0.0/0"),
        ("172.16.255.1/12", "172.16.0.0/12", "172.16.0.0/12"),
    ],
)
def test_addresses_and_prefixes(addr: str, network: str | None, written: str) -> None:
    rule = Rule.parse(f"use vma udp_receiver {addr}:1")
    assert rule.local is not None
    assert rule.local.network == network
    assert str(rule) == f"use vma udp_receiver {written}:1"


@pytest.mark.parametrize(
    ("port", "ports", "written"),
    [
        ("*", None, "*"),
        ("0", (0, 0), "0"),
        ("65535", (65535, 65535), "65535"),
        ("5000", (5000, 5000), "5000"),
        ("5000-5010", (5000, 5010), "5000-5010"),
        ("7-7", (7, 7), "7"),
        ("0-65535", (0, 65535), "0-65535"),
    ],
)
def test_ports_and_ranges(port: str, ports: tuple[int, int] | None, written: str) -> None:
    rule = Rule.parse(f"use os tcp_server *:{port}")
    assert rule.local == Endpoint(None, ports)
    assert str(rule) == f"use os tcp_server *:{written}"


def test_wildcard_and_full_ranges_stay_distinct() -> None:
    # XLIO treats a rule without any constraint specially: '*' is not '0.0.0.0/0' for it.
    star = Rule.parse("use os udp_receiver *:*")
    full = Rule.parse("use os udp_receiver 0.0.0.0/0:0-65535")
    assert star != full
    assert star.local is not None and star.local.is_wildcard
    assert full.local is not None and not full.local.is_wildcard
    assert str(full) == "use os udp_receiver 0.0.0.0/0:0-65535"


# --------------------------------------------------------------------------------------------
# Bad tokens: every error names the token and its column


@pytest.mark.parametrize(
    ("text", "token", "column", "words"),
    [
        # keyword fields
        ("usa vma udp_receiver *:1", "usa", 1, "expected 'use'"),
        ("use vmx udp_receiver *:1", "vmx", 5, "unknown transport"),
        ("use offload udp_receiver *:1", "offload", 5, "unknown transport"),
        ("use vma udp_recv *:1", "udp_recv", 9, "unknown role"),
        ("use vma tcp *:1", "tcp", 9, "tcp_server"),
        ("use vma udp *:1", "udp", 9, "udp_receiver"),
        # addresses
        ("use vma udp_receiver 1.2.3.256:1", "1.2.3.256", 22, "octet '256'"),
        ("use vma udp_receiver 999.2.3.4:1", "999.2.3.4", 22, "out of range 0..255"),
        ("use vma udp_receiver 1.2.3:1", "1.2.3", 22, "dotted IPv4"),
        ("use vma udp_receiver 1.2.3.4.5:1", "1.2.3.4.5", 22, "dotted IPv4"),
        ("use vma udp_receiver localhost:1", "localhost", 22, "dotted IPv4"),
        ("use vma udp_receiver ::1:1", "", 22, "missing address"),
        ("use vma udp_receiver 1.2.3.-4:1", "1.2.3.-4", 22, "dotted IPv4"),
        ("use vma udp_receiver 01.2.3.4:1", "01.2.3.4", 22, "leading zero"),
        ("use vma udp_receiver 1.2.3.00:1", "1.2.3.00", 22, "leading zero"),
        ("use vma udp_receiver 1.2.3.4/33:1", "1.2.3.4/33", 22, "prefix length '33'"),
        ("use vma udp_receiver 1.2.3.4/100:1", "1.2.3.4/100", 22, "out of range 0..32"),
        ("use vma udp_receiver 1.2.3.4/08:1", "1.2.3.4/08", 22, "leading zero"),
        ("use vma udp_receiver 1.2.3.4/:1", "1.2.3.4/", 22, "missing prefix"),
        ("use vma udp_receiver 1.2.3.4/x:1", "1.2.3.4/x", 22, "not a number"),
        ("use vma udp_receiver */8:1", "*/8", 22, "dotted IPv4"),
        ("use vma udp_receiver :1", "", 22, "missing address"),
        # ports
        ("use vma udp_receiver *:65536", "65536", 24, "out of range 0..65535"),
        ("use vma udp_receiver *:99999999999", "99999999999", 24, "out of range"),
        ("use vma udp_receiver *:6000-5000", "6000-5000", 24, "reversed"),
        ("use vma udp_receiver *:1-70000", "1-70000", 24, "out of range"),
        ("use vma udp_receiver *:05000", "05000", 24, "leading zero"),
        ("use vma udp_receiver *:-5", "-5", 24, "bad port"),
        ("use vma udp_receiver *:5-", "5-", 24, "bad port"),
        ("use vma udp_receiver *:http", "http", 24, "bad port"),
        ("use vma udp_receiver *:1-2-3", "1-2-3", 24, "bad port"),
        ("use vma udp_receiver 1.2.3.4:", "", 30, "missing port"),
        # structure of the address field
        ("use vma udp_receiver 5000", "5000", 22, "not an <addr>:<port> pair"),
        ("use vma udp_receiver *", "*", 22, "not an <addr>:<port> pair"),
        ("use vma tcp_client *:1:*", "*", 24, "incomplete second pair"),
        ("use vma tcp_client *:1:*:2:3", ":3", 27, "at most two"),
        ("use vma udp_connect *:1:*:2:*:3", ":*:3", 28, "at most two"),
        ("use vma tcp_client *:1:*:99999", "99999", 26, "out of range"),
        ("use vma tcp_client *:1:300.1.1.1:2", "300.1.1.1", 24, "octet"),
        # characters
        ("use vma udp_receiver *:1\r", "\r", 25, "unexpected character"),
        ("use vma udp_receiver *:1\x00", "\x00", 25, "unexpected character"),
        ("use vma udp_receiver \u00e9:1", "\u00e9", 22, "unexpected character"),
        ("use\u00a0vma udp_receiver *:1", "\u00a0", 4, "unexpected character"),
        ("use vma udp_receiver *:1\nuse os udp_receiver *:2", "\n", 25, "single line"),
    ],
)
def test_bad_tokens_are_named(text: str, token: str, column: int, words: str) -> None:
    err = syntax_error(text)
    assert isinstance(err, ValueError)
    assert err.token == token
    assert err.column == column
    assert err.lineno is None
    assert err.line_text == text
    message = str(err)
    assert words in message
    assert f"column {column}" in message
    if token.strip():
        assert repr(token) in message or repr(token[:57] + "...") in message


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("", 1, "empty rule"),
        ("   ", 1, "empty rule"),
        ("# only a comment", 1, "empty rule"),
        ("use", 4, "missing transport"),
        ("use vma", 8, "missing role"),
        ("use vma udp_receiver", 21, "missing <addr>:<port>"),
        ("use vma udp_receiver   ", 21, "missing <addr>:<port>"),
        ("use vma udp_receiver # *:5000", 21, "missing <addr>:<port>"),
    ],
)
def test_missing_fields(text: str, column: int, words: str) -> None:
    err = syntax_error(text)
    assert err.token == ""
    assert err.column == column
    assert words in str(err)


@pytest.mark.parametrize(
    ("text", "token", "column"),
    [
        ("use vma udp_receiver *:1 extra", "extra", 26),
        ("use vma tcp_client 1.2.3.4:80 5.6.7.8:90", "5.6.7.8:90", 31),
        ("use vma udp_receiver 1.2.3.4 :80", ":80", 30),
        ("use vma udp_receiver *:1 use os udp_receiver *:2", "use", 26),
    ],
)
def test_extra_fields(text: str, token: str, column: int) -> None:
    err = syntax_error(text)
    assert err.token == token
    assert err.column == column
    assert "unexpected extra field" in str(err)


@pytest.mark.parametrize("role", ["tcp_server", "udp_sender", "udp_receiver"])
def test_second_pair_rejected_for_single_pair_roles(role: str) -> None:
    text = f"use os {role} 1.2.3.4:5:6.7.8.9:10"
    err = syntax_error(text)
    assert err.token == "6.7.8.9:10"
    assert err.column == text.index("6.7.8.9") + 1
    assert "only allowed for tcp_client and udp_connect" in str(err)


@pytest.mark.parametrize("role", ["tcp_client", "udp_connect"])
def test_second_pair_is_the_local_end(role: str) -> None:
    rule = Rule.parse(f"use os {role} 10.0.0.0/8:80:192.168.1.5:40000-40010")
    # XLIO's documented order for these roles: remote first, then local.
    assert rule.remote == Endpoint("10.0.0.0/8", (80, 80))
    assert rule.local == Endpoint("192.168.1.5", (40000, 40010))
    assert rule.pairs == (rule.remote, rule.local)
    assert str(rule) == f"use os {role} 10.0.0.0/8:80:192.168.1.5:40000-40010"
    three = Rule.parse(f"use os {role} 10.0.0.0/8:80")
    assert three.local is None
    assert three != Rule.parse(f"use os {role} 10.0.0.0/8:80:*:*")


def test_udp_sender_pair_is_the_destination() -> None:
    rule = Rule.parse("use os udp_sender 239.0.0.0/8:*")
    assert rule.local is None
    assert rule.remote == Endpoint("239.0.0.0/8", None)


# --------------------------------------------------------------------------------------------
# Spacing, newline, comments, case


@pytest.mark.parametrize(
    "text",
    [
        "use vma udp_receiver 239.1.1.1:5000",
        "use vma udp_receiver 239.1.1.1:5000\n",
        "use\tvma\tudp_receiver\t239.1.1.1:5000",
        "  use   vma \t udp_receiver    239.1.1.1:5000   ",
        "\t use vma udp_receiver 239.1.1.1:5000 \t\n",
        "use vma udp_receiver 239.1.1.1:5000 # market data feed A",
        "use vma udp_receiver 239.1.1.1:5000# no space before the comment\n",
        "USE VMA UDP_RECEIVER 239.1.1.1:5000",
        "Use Xlio Udp_Receiver 239.1.1.1:5000",
        "use XLIO udp_receiver 239.1.1.1/32:5000-5000",
    ],
)
def test_spacing_newline_comment_case_all_give_the_same_rule(text: str) -> None:
    rule = Rule.parse(text)
    assert rule == Rule(Transport.VMA, Role.UDP_RECEIVER, Endpoint("239.1.1.1", (5000, 5000)))
    assert str(rule) == "use vma udp_receiver 239.1.1.1:5000"


def test_only_one_trailing_newline() -> None:
    err = syntax_error("use vma udp_receiver *:1\n\n")
    assert err.token == "\n"


def test_columns_count_leading_whitespace() -> None:
    err = syntax_error("\t  use vma udp_receiver *:70000")
    assert err.column == 27


def test_huge_numbers_are_syntax_errors_not_int_limit_errors() -> None:
    digits = "9" * 5000  # beyond int()'s default 4300-digit limit
    err = syntax_error(f"use vma udp_receiver *:{digits}")
    assert err.token == digits
    assert len(str(err)) < 500
    err = syntax_error(f"use vma udp_receiver 1.2.3.{digits}:1")
    assert "out of range" in str(err)


def test_non_str_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes"):
        Rule.parse(b"use vma udp_receiver *:1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="NoneType"):
        validate(None)  # type: ignore[arg-type]


def test_error_is_picklable_and_keeps_its_fields() -> None:
    err = syntax_error("use vma udp_receiver *:70000")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is RuleSyntaxError
    assert (copy.token, copy.column, copy.line_text, copy.lineno) == (
        "70000",
        24,
        "use vma udp_receiver *:70000",
        None,
    )
    assert str(copy) == str(err)


# --------------------------------------------------------------------------------------------
# Formatting and round trips


@pytest.mark.parametrize(
    "text",
    [
        "use os udp_receiver *:*",
        "use vma udp_receiver 239.1.1.1:5000",
        "use sdp tcp_server 10.0.0.0/8:1-1024",
        "use sa udp_sender 1.2.3.4:*",
        "use * tcp_client *:80:10.0.0.1:*",
        "use os udp_connect *:53",
        "use vma udp_connect 8.8.8.8:53:0.0.0.0/0:0-65535",
    ],
)
def test_canonical_text_round_trips(text: str) -> None:
    rule = Rule.parse(text)
    assert str(rule) == text
    assert rule.format() == text
    assert Rule.parse(str(rule)) == rule
    assert XLIO_CANONICAL.fullmatch(text)
    assert "\n" not in str(rule)


def test_offload_keyword_choice() -> None:
    rule = Rule.parse("use xlio udp_receiver *:1")
    assert rule.format() == "use vma udp_receiver *:1"
    assert rule.format(offload_keyword="xlio") == "use xlio udp_receiver *:1"
    assert Rule.parse(rule.format(offload_keyword="xlio")) == rule
    assert Rule.parse("use os udp_receiver *:1").format(offload_keyword="xlio") == (
        "use os udp_receiver *:1"
    )
    with pytest.raises(ValueError, match="offload_keyword"):
        rule.format(offload_keyword="offload")


def test_rules_are_hashable_values() -> None:
    a = Rule.parse("use vma udp_receiver 10.1.2.3/8:5000")
    b = Rule.parse("USE XLIO udp_receiver 10.0.0.0/8:5000-5000")
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1


if HAVE_HYPOTHESIS:

    def _case(word: str) -> st.SearchStrategy[str]:
        return st.sampled_from([word, word.upper(), word.capitalize(), word.swapcase()])

    _addr_parts = st.one_of(
        st.none(),
        st.tuples(
            st.integers(0, 2**32 - 1),
            st.one_of(st.none(), st.integers(0, 32)),
        ),
    )
    _port_parts = st.one_of(
        st.none(),
        st.integers(0, 65535).map(lambda p: (p, None)),
        st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda t: (min(t), max(t))),
    )
    _blank = st.sampled_from([" ", "\t", "  ", " \t ", "\t\t"])

    def _addr_text(parts: tuple[int, int | None] | None) -> str:
        if parts is None:
            return "*"
        value, prefix = parts
        dotted = str(ipaddress.IPv4Address(value))
        return dotted if prefix is None else f"{dotted}/{prefix}"

    def _port_text(parts: tuple[int, int | None] | None) -> str:
        if parts is None:
            return "*"
        low, high = parts
        return str(low) if high is None else f"{low}-{high}"

    def _expected_endpoint(
        addr: tuple[int, int | None] | None, port: tuple[int, int | None] | None
    ) -> Endpoint:
        network = None
        if addr is not None:
            value, prefix = addr
            net = ipaddress.IPv4Network((value, 32 if prefix is None else prefix), strict=False)
            network = str(net.network_address) if net.prefixlen == 32 else str(net)
        ports = None
        if port is not None:
            low, high = port
            ports = (low, low if high is None else high)
        # Built without the parser: the dataclass is given oracle-computed values.
        return Endpoint(network, ports)

    @st.composite
    def rule_texts(draw: st.DrawFn) -> tuple[str, Rule]:
        transport = draw(st.sampled_from(["os", "vma", "xlio", "sdp", "sa", "*"]))
        role = draw(st.sampled_from(ALL_ROLES))
        first = (draw(_addr_parts), draw(_port_parts))
        second = None
        if role in ("tcp_client", "udp_connect") and draw(st.booleans()):
            second = (draw(_addr_parts), draw(_port_parts))
        tuple_text = f"{_addr_text(first[0])}:{_port_text(first[1])}"
        if second is not None:
            tuple_text += f":{_addr_text(second[0])}:{_port_text(second[1])}"
        lead = draw(st.sampled_from(["", " ", "\t", "  \t"]))
        tail = draw(st.sampled_from(["", " ", "\t ", " # comment", "#x", " \t# a # b"]))
        newline = draw(st.sampled_from(["", "\n"]))
        text = (
            lead
            + draw(_case("use"))
            + draw(_blank)
            + (transport if transport == "*" else draw(_case(transport)))
            + draw(_blank)
            + draw(_case(role))
            + draw(_blank)
            + tuple_text
            + tail
            + newline
        )
        first_ep = _expected_endpoint(*first)
        second_ep = None if second is None else _expected_endpoint(*second)
        the_transport = Transport.VMA if transport == "xlio" else Transport(transport)
        the_role = Role(role)
        if role in ("tcp_server", "udp_receiver"):
            expected = Rule(the_transport, the_role, local=first_ep)
        else:
            expected = Rule(the_transport, the_role, local=second_ep, remote=first_ep)
        return text, expected

    @needs_hypothesis
    @settings(max_examples=400, deadline=None)
    @given(rule_texts())
    def test_property_valid_text_parses_to_the_oracle_rule(case: tuple[str, Rule]) -> None:
        text, expected = case
        rule = Rule.parse(text)
        assert rule == expected
        canonical = str(rule)
        # format(parse(x)) is a fixed point, and is text XLIO 3.51.1 accepts.
        assert str(Rule.parse(canonical)) == canonical
        assert Rule.parse(canonical) == rule
        assert XLIO_CANONICAL.fullmatch(canonical), canonical

    _endpoints = st.builds(
        Endpoint.make,
        ip=st.one_of(st.none(), st.integers(0, 2**32 - 1).map(lambda v: _addr_text((v, None)))),
        port=_port_parts.map(
            lambda p: None if p is None else (p[0], p[0] if p[1] is None else p[1])
        ),
    )

    @st.composite
    def random_rules(draw: st.DrawFn) -> Rule:
        transport = draw(st.sampled_from(list(Transport)))
        role = draw(st.sampled_from(list(Role)))
        first = draw(_endpoints)
        if role in (Role.TCP_SERVER, Role.UDP_RECEIVER):
            return Rule(transport, role, local=first)
        local = None
        if role is not Role.UDP_SENDER:
            local = draw(st.one_of(st.none(), _endpoints))
        return Rule(transport, role, local=local, remote=first)

    @needs_hypothesis
    @settings(max_examples=400, deadline=None)
    @given(random_rules())
    def test_property_random_rules_round_trip(rule: Rule) -> None:
        assert Rule.parse(str(rule)) == rule
        assert Rule.parse(rule.format(offload_keyword="xlio")) == rule
        assert XLIO_CANONICAL.fullmatch(str(rule))

    _grammar_alphabet = "use vmaosdpxlitcp_rvnd*0123456789.:/-\t#\n\r"

    @needs_hypothesis
    @settings(max_examples=1500, deadline=None)
    @given(st.one_of(st.text(), st.text(alphabet=_grammar_alphabet, max_size=60)))
    def test_property_any_text_parses_or_raises_rule_syntax_error(text: str) -> None:
        try:
            rule = Rule.parse(text)
        except RuleSyntaxError as err:
            assert 1 <= err.column <= len(text) + 1
            assert err.line_text == text
        else:
            assert XLIO_CANONICAL.fullmatch(str(rule))
            assert Rule.parse(str(rule)) == rule

    @needs_hypothesis
    @settings(max_examples=400, deadline=None)
    @given(
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
        st.integers(0, 2**32 - 1),
        st.integers(0, 65535),
    )
    def test_property_prefix_matching_agrees_with_ipaddress(
        net: int, prefix: int, host: int, port: int
    ) -> None:
        endpoint = Endpoint(f"{ipaddress.IPv4Address(net)}/{prefix}", None)
        oracle = ipaddress.IPv4Network((net, prefix), strict=False)
        ip = str(ipaddress.IPv4Address(host))
        assert endpoint.matches(ip, port) == (ipaddress.IPv4Address(host) in oracle)


# --------------------------------------------------------------------------------------------
# Endpoint


def test_endpoint_parse_and_str() -> None:
    assert Endpoint.parse("*:*") == Endpoint()
    assert Endpoint.parse(" 239.1.1.0/24:5000-5010 ") == Endpoint("239.1.1.0/24", (5000, 5010))
    assert str(Endpoint("10.9.8.7/16", (1, 1))) == "10.9.0.0/16:1"
    assert str(Endpoint()) == "*:*"
    assert Endpoint("*", None) == Endpoint()
    for bad, token in [
        ("1.2.3.4", "1.2.3.4"),
        ("1.2.3.4:5:6", ":6"),
        ("1.2.3.4 :5", " "),
        ("x:1", "x"),
        ("*:1-0", "1-0"),
    ]:
        with pytest.raises(RuleSyntaxError) as info:
            Endpoint.parse(bad)
        assert info.value.token == token, bad


def test_endpoint_constructor_validates() -> None:
    with pytest.raises(ValueError, match=r"out of range 0\.\.32"):
        Endpoint("1.2.3.4/33")
    with pytest.raises(ValueError, match="leading zero"):
        Endpoint("1.2.3.04")
    with pytest.raises(TypeError):
        Endpoint(12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Endpoint(None, 5000)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Endpoint(None, (True, 5))
    with pytest.raises(ValueError, match="reversed"):
        Endpoint(None, (6, 5))
    with pytest.raises(ValueError, match="out of range"):
        Endpoint(None, (1, 65536))


def test_endpoint_make() -> None:
    assert Endpoint.make() == Endpoint()
    assert Endpoint.make(ip="10.1.1.1", prefix=8, port=53) == Endpoint("10.0.0.0/8", (53, 53))
    assert Endpoint.make(ip="10.1.1.1/8") == Endpoint("10.0.0.0/8")
    assert Endpoint.make(port="100-200") == Endpoint(None, (100, 200))
    assert Endpoint.make(port=(100, 200)) == Endpoint(None, (100, 200))
    assert Endpoint.make(ip="*", port="*") == Endpoint()
    with pytest.raises(ValueError, match="prefix needs an ip"):
        Endpoint.make(prefix=8)
    with pytest.raises(ValueError, match="already has a prefix"):
        Endpoint.make(ip="10.0.0.0/8", prefix=8)
    with pytest.raises(TypeError):
        Endpoint.make(port=True)
    with pytest.raises(TypeError):
        Endpoint.make(port=5.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Endpoint.make(ip=0x0A000001)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Endpoint.make(port="5000-")


@pytest.mark.parametrize(
    ("endpoint", "ip", "port", "expected"),
    [
        (Endpoint(), "1.2.3.4", 1, True),
        (Endpoint(), "::1", 1, True),  # no address constraint
        (Endpoint("10.0.0.0/8"), "10.255.1.2", 9, True),
        (Endpoint("10.0.0.0/8"), "11.0.0.1", 9, False),
        (Endpoint("10.1.2.3"), "10.1.2.3", 9, True),
        (Endpoint("10.1.2.3"), "10.1.2.4", 9, False),
        (Endpoint("0.0.0.0/0"), "200.1.1.1", 9, True),
        (Endpoint("0.0.0.0/0"), "2001:db8::1", 9, False),  # XLIO cannot convert it
        (Endpoint("10.0.0.0/8"), "::ffff:10.9.9.9", 9, True),  # IPv4-mapped
        (Endpoint("0.0.0.0"), "", 9, True),  # '' is INADDR_ANY
        (Endpoint(None, (5000, 5010)), "1.1.1.1", 4999, False),
        (Endpoint(None, (5000, 5010)), "1.1.1.1", 5000, True),
        (Endpoint(None, (5000, 5010)), "1.1.1.1", 5010, True),
        (Endpoint(None, (5000, 5010)), "1.1.1.1", 5011, False),
        (Endpoint("239.1.1.0/24", (5000, 5000)), "239.1.1.7", 5000, True),
        (Endpoint("239.1.1.0/24", (5000, 5000)), "239.1.2.7", 5000, False),
    ],
)
def test_endpoint_matches(endpoint: Endpoint, ip: str, port: int, expected: bool) -> None:
    assert endpoint.matches(ip, port) is expected


def test_endpoint_matches_rejects_bad_queries() -> None:
    endpoint = Endpoint()
    with pytest.raises(ValueError, match="not an IP address"):
        endpoint.matches("1.2.3", 1)
    with pytest.raises(TypeError):
        endpoint.matches(b"1.2.3.4", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        endpoint.matches("1.2.3.4", 70000)
    with pytest.raises(TypeError):
        endpoint.matches("1.2.3.4", "80")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Rule constructor and make()


def test_rule_constructor_checks_pairs_for_the_role() -> None:
    ep = Endpoint()
    assert Rule("os", "udp_receiver", ep).transport is Transport.OS  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local is required"):
        Rule(Transport.OS, Role.TCP_SERVER)
    with pytest.raises(ValueError, match="no remote pair"):
        Rule(Transport.OS, Role.UDP_RECEIVER, local=ep, remote=ep)
    with pytest.raises(ValueError, match="remote is required"):
        Rule(Transport.OS, Role.TCP_CLIENT, local=ep)
    with pytest.raises(ValueError, match="give the destination as remote"):
        Rule(Transport.OS, Role.UDP_SENDER, local=ep)
    with pytest.raises(TypeError, match="local must be an Endpoint"):
        Rule(Transport.OS, Role.UDP_RECEIVER, local="*:*")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown transport"):
        Rule("offload", Role.UDP_RECEIVER, ep)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="role must be"):
        Rule(Transport.OS, 3, ep)  # type: ignore[arg-type]


def test_make_with_pairs_as_text() -> None:
    rule = Rule.make(transport="os", role="udp_receiver", local="*:5000", remote=None)
    assert str(rule) == "use os udp_receiver *:5000"
    rule = Rule.make(transport="xlio", role="TCP_CLIENT", remote="10.0.0.0/8:*", local="*:*")
    assert str(rule) == "use vma tcp_client 10.0.0.0/8:*:*:*"
    rule = Rule.make(transport=Transport.OS, role=Role.UDP_SENDER, remote=Endpoint(None, (53, 53)))
    assert str(rule) == "use os udp_sender *:53"


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        (
            {"transport": Transport.OS, "role": "udp_receiver", "ip": "239.1.1.1", "port": 5000},
            "use os udp_receiver 239.1.1.1:5000",
        ),
        (
            {"transport": "vma", "role": "udp_receiver", "ip": "239.1.1.9", "prefix": 24},
            "use vma udp_receiver 239.1.1.0/24:*",
        ),
        (
            {"transport": "vma", "role": "tcp_server", "port": (1, 1024)},
            "use vma tcp_server *:1-1024",
        ),
        (
            {"transport": "os", "role": "udp_sender", "ip": "8.8.8.8", "port": 53},
            "use os udp_sender 8.8.8.8:53",
        ),
        (
            {
                "transport": "os",
                "role": "udp_connect",
                "ip": "8.8.8.8",
                "port": "53",
                "local": "*:*",
            },
            "use os udp_connect 8.8.8.8:53:*:*",
        ),
        (
            {"transport": "os", "role": "tcp_client", "port": 443},
            "use os tcp_client *:443",
        ),
        ({"transport": "*", "role": "udp_receiver"}, "use * udp_receiver *:*"),
        ({"transport": "os", "role": "udp_sender"}, "use os udp_sender *:*"),
    ],
)
def test_make_with_ip_port_prefix(kwargs: dict[str, object], text: str) -> None:
    rule = Rule.make(**kwargs)  # type: ignore[arg-type]
    assert str(rule) == text
    assert rule == Rule.parse(text)


def test_make_rejects_bad_keywords_and_types() -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        Rule.make(transport="os", role="udp_receiver", addr="1.2.3.4")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Rule.make("os", "udp_receiver")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="either as local= or as ip/port/prefix"):
        Rule.make(transport="os", role="udp_receiver", local="*:1", port=2)
    with pytest.raises(TypeError, match="either as remote= or as ip/port/prefix"):
        Rule.make(transport="os", role="tcp_client", remote="*:1", ip="1.2.3.4")
    with pytest.raises(ValueError, match="give the destination as remote"):
        Rule.make(transport="os", role="udp_sender", local="*:53")
    with pytest.raises(ValueError, match="no remote pair"):
        Rule.make(transport="os", role="tcp_server", remote="*:53")
    with pytest.raises(TypeError, match="transport must be"):
        Rule.make(transport=1, role="udp_receiver")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown role"):
        Rule.make(transport="os", role="udp_listener")
    with pytest.raises(TypeError, match="local must be an Endpoint"):
        Rule.make(transport="os", role="udp_receiver", local=("1.2.3.4", 5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="port must be an int"):
        Rule.make(transport="os", role="udp_receiver", port=5000.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        Rule.make(transport="os", role="udp_receiver", port=65536)
    with pytest.raises(ValueError, match="octet"):
        Rule.make(transport="os", role="udp_receiver", ip="1.2.3.400")
    with pytest.raises(RuleSyntaxError):
        Rule.make(transport="os", role="udp_receiver", local="*:1:2")


# --------------------------------------------------------------------------------------------
# Matching


def test_rule_matches_local_roles() -> None:
    rule = Rule.parse("use os udp_receiver 239.1.1.0/24:5000-5010")
    assert rule.matches("udp_receiver", local=("239.1.1.5", 5005))
    assert rule.matches(Role.UDP_RECEIVER, local=("239.1.1.5", 5005), remote=("9.9.9.9", 1))
    assert not rule.matches("udp_receiver", local=("239.1.2.5", 5005))
    assert not rule.matches("udp_receiver", local=("239.1.1.5", 5011))
    assert not rule.matches("tcp_server", local=("239.1.1.5", 5005))  # other role
    with pytest.raises(ValueError, match="needs local"):
        rule.matches("udp_receiver", remote=("239.1.1.5", 5005))


def test_rule_matches_remote_roles() -> None:
    sender = Rule.parse("use os udp_sender *:53")
    assert sender.matches("udp_sender", remote=("8.8.8.8", 53))
    assert not sender.matches("udp_sender", remote=("8.8.8.8", 54))
    with pytest.raises(ValueError, match="needs remote"):
        sender.matches("udp_sender", local=("8.8.8.8", 53))

    client = Rule.parse("use os tcp_client 10.0.0.0/8:80:192.168.0.0/16:*")
    assert client.matches("tcp_client", remote=("10.1.1.1", 80), local=("192.168.3.3", 4000))
    assert not client.matches("tcp_client", remote=("10.1.1.1", 80), local=("172.16.3.3", 4000))
    assert not client.matches("tcp_client", remote=("11.1.1.1", 80), local=("192.168.3.3", 4000))
    # Like XLIO: without a local address the optional local pair is not consulted.
    assert client.matches("tcp_client", remote=("10.1.1.1", 80))


def test_rule_matches_query_types() -> None:
    rule = Rule.parse("use os udp_receiver *:*")
    with pytest.raises(TypeError, match=r"\(ip, port\) tuple"):
        rule.matches("udp_receiver", local="1.2.3.4:5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ip must be a str"):
        rule.matches("udp_receiver", local=(1, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range"):
        rule.matches("udp_receiver", local=("1.2.3.4", -1))
    with pytest.raises(ValueError, match="unknown role"):
        rule.matches("udp", local=("1.2.3.4", 1))


def test_first_match_order_and_inert_transports() -> None:
    rules = [
        Rule.parse("use sdp udp_receiver *:*"),  # never matches in XLIO: skipped
        Rule.parse("use os udp_receiver 239.1.1.1:5000"),
        Rule.parse("use vma udp_receiver 239.1.1.0/24:*"),
        Rule.parse("use os udp_receiver *:*"),
        Rule.parse("use vma udp_sender *:*"),
    ]
    assert first_match(rules, "udp_receiver", local=("239.1.1.1", 5000)) is rules[1]
    assert first_match(rules, "udp_receiver", local=("239.1.1.2", 5000)) is rules[2]
    assert first_match(rules, "udp_receiver", local=("10.0.0.1", 1)) is rules[3]
    assert first_match(rules, "udp_sender", remote=("10.0.0.1", 1)) is rules[4]
    assert first_match(rules, "tcp_server", local=("10.0.0.1", 1)) is None
    assert first_match([], "udp_receiver", local=("1.1.1.1", 1)) is None
    assert first_match(["use os tcp_server *:22"], "tcp_server", local=("0.0.0.0", 22)) == (
        Rule.parse("use os tcp_server *:22")
    )
    with pytest.raises(ValueError, match="needs local"):
        first_match([], "udp_receiver")
    with pytest.raises(TypeError, match="int"):
        first_match([42], "udp_receiver", local=("1.1.1.1", 1))  # type: ignore[list-item]


def test_first_match_with_add_conf_rule_history() -> None:
    # add_conf_rule puts each new rule at the head: the newest wins, so walk history reversed.
    history = [
        Rule.parse("use vma udp_receiver *:*"),
        Rule.parse("use os udp_receiver *:5000"),
    ]
    found = first_match(reversed(history), "udp_receiver", local=("239.1.1.1", 5000))
    assert found is history[1]
    found = first_match(history, "udp_receiver", local=("239.1.1.1", 5000))
    assert found is history[0]


# --------------------------------------------------------------------------------------------
# validate / coerce


def test_validate_and_coerce() -> None:
    rule = validate("use os udp_receiver *:1\n")
    assert rule == Rule.parse("use os udp_receiver *:1")
    assert coerce(rule) is rule
    assert coerce("use os udp_receiver *:1") == rule
    with pytest.raises(RuleSyntaxError):
        validate("use os udp_receiver *:1:*:2")
    with pytest.raises(TypeError, match="bytes"):
        coerce(b"use os udp_receiver *:1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        coerce(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Endpoint"):
        coerce(Endpoint())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# ConfFile

REALISTIC = (
    "# libxlio.conf for the market-data host\n"
    "#\n"
    "\n"
    "application-id * *\n"
    "log destination ystderr min-level 9\n"
    "\n"
    "# feed A goes through XLIO, the rest of 239.1.1.0/24 through the kernel\n"
    "use vma udp_receiver 239.1.1.1:5000\n"
    "use os  udp_receiver\t239.1.1.0/24:*   # kernel for the rest\n"
    "   \t\n"
    "  # indented comment\n"
    "USE XLIO tcp_client 10.0.0.0/8:443:*:*\n"
    "use os udp_connect *:53\n"
    "application-id md_gw B1\n"
    "use sdp tcp_server *:1-1024\n"
    "some-future-statement with args\n"
    "# caf\udce9 (latin-1, not UTF-8, on disk)\n"
    "use * udp_sender 10.1.2.3/16:*"  # no final newline
)


def test_conffile_round_trip_is_byte_identical() -> None:
    conf = ConfFile.parse(REALISTIC)
    assert conf.format() == REALISTIC
    assert "".join(conf.lines) == REALISTIC
    assert [str(rule) for rule in conf.rules] == [
        "use vma udp_receiver 239.1.1.1:5000",
        "use os udp_receiver 239.1.1.0/24:*",
        "use vma tcp_client 10.0.0.0/8:443:*:*",
        "use os udp_connect *:53",
        "use sdp tcp_server *:1-1024",
        "use * udp_sender 10.1.0.0/16:*",
    ]
    assert repr(conf) == "<ConfFile: 18 lines, 6 rules>"


def test_conffile_empty_and_degenerate_texts() -> None:
    for text in ["", "\n", "\n\n", "# x", "application-id * *\n"]:
        conf = ConfFile.parse(text)
        assert conf.format() == text
        assert conf.rules == []
    conf = ConfFile()
    conf.append("use os udp_receiver *:1")
    assert conf.format() == "use os udp_receiver *:1\n"


def test_conffile_canonical_output() -> None:
    conf = ConfFile.parse(REALISTIC)
    canonical = conf.format(canonical=True)
    lines = canonical.split("\n")
    assert lines[8] == "use os udp_receiver 239.1.1.0/24:* # kernel for the rest"
    assert lines[11] == "use vma tcp_client 10.0.0.0/8:443:*:*"
    assert lines[17] == "use * udp_sender 10.1.0.0/16:*"  # still no final newline
    assert canonical.splitlines()[:7] == REALISTIC.splitlines()[:7]  # other lines untouched
    for line in canonical.split("\n"):
        if line.startswith("use"):
            body = line.split("#")[0].rstrip()
            assert XLIO_CANONICAL.fullmatch(body), line
    assert ConfFile.parse(canonical).rules == conf.rules
    xlio_words = conf.format(canonical=True, offload_keyword="xlio")
    assert "use xlio udp_receiver 239.1.1.1:5000\n" in xlio_words
    with pytest.raises(ValueError, match="offload_keyword"):
        conf.format(offload_keyword="VMA")


def test_conffile_edits() -> None:
    conf = ConfFile.parse(REALISTIC)
    new_first = Rule.parse("use os udp_receiver 239.9.9.9:9")
    conf.insert(0, new_first)
    conf.insert(2, "use os tcp_server *:22")
    conf.insert(-1, Rule.parse("use os udp_sender 1.1.1.1:1"))
    conf.insert(100, "use vma udp_receiver *:7")
    conf.append(Rule.make(transport="os", role="udp_receiver", port=8))
    conf.remove("use os udp_connect *:53")
    conf.remove(Rule.parse("USE VMA udp_receiver 239.1.1.1:5000"))
    assert [str(rule) for rule in conf.rules] == [
        "use os udp_receiver 239.9.9.9:9",
        "use os tcp_server *:22",
        "use os udp_receiver 239.1.1.0/24:*",
        "use vma tcp_client 10.0.0.0/8:443:*:*",
        "use sdp tcp_server *:1-1024",
        "use os udp_sender 1.1.1.1:1",
        "use * udp_sender 10.1.0.0/16:*",
        "use vma udp_receiver *:7",
        "use os udp_receiver *:8",
    ]
    text = conf.format()
    lines = text.split("\n")
    # The new first rule sits just before the old first rule, after the header lines.
    assert lines[:7] == REALISTIC.split("\n")[:7]
    assert lines[7] == "use os udp_receiver 239.9.9.9:9"
    assert "use os  udp_receiver\t239.1.1.0/24:*   # kernel for the rest" in lines
    # The old unterminated last line got a newline because rules now follow it.
    assert lines[-3:] == ["use vma udp_receiver *:7", "use os udp_receiver *:8", ""]
    assert "use * udp_sender 10.1.2.3/16:*" in lines
    assert ConfFile.parse(text).rules == conf.rules
    with pytest.raises(ValueError, match="not in file"):
        conf.remove("use os udp_connect *:53")
    with pytest.raises(RuleSyntaxError):
        conf.append("use os udp_receiver *:1:*:2")
    with pytest.raises(TypeError):
        conf.insert("0", "use os udp_receiver *:1")  # type: ignore[arg-type]
    rules_copy = conf.rules
    rules_copy.clear()
    assert len(conf.rules) == 9  # .rules is a copy


def test_conffile_bad_line_reports_its_line_number() -> None:
    text = (
        "# header\n"
        "application-id * *\n"
        "\n"
        "use vma udp_receiver *:5000\n"
        "  use vma udp_receiver 1.2.3.4:70000  # typo\n"
    )
    with pytest.raises(RuleSyntaxError) as info:
        ConfFile.parse(text)
    err = info.value
    assert err.lineno == 5
    assert err.token == "70000"
    assert err.column == 32
    assert err.line_text == "  use vma udp_receiver 1.2.3.4:70000  # typo\n"
    assert str(err).startswith("line 5, column 32: port '70000' is out of range")


@pytest.mark.parametrize(
    ("line", "token"),
    [
        ("use vma\n", ""),
        ("Use os udp_receiver *:1:*:2\n", "*:2"),
        ("use os udp_receiver *:1\r\n", "\r"),
        ("use#comment right after the keyword\n", ""),
    ],
)
def test_conffile_malformed_use_lines(line: str, token: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        ConfFile.parse("# ok\n" + line)
    assert info.value.lineno == 2
    assert info.value.token == token


def test_conffile_keeps_lines_that_only_look_like_rules() -> None:
    text = "user vma udp_receiver *:1\nusevma\n#use vma bad\n"
    conf = ConfFile.parse(text)
    assert conf.rules == []
    assert conf.format() == text


def test_conffile_write_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "libxlio.conf"
    path.write_bytes(REALISTIC.encode("utf-8", "surrogateescape"))
    os.chmod(path, 0o640)
    conf = ConfFile.read(path)
    assert conf.format() == REALISTIC
    conf.write(path)
    assert path.read_bytes() == REALISTIC.encode("utf-8", "surrogateescape")
    assert b"caf\xe9 (latin-1" in path.read_bytes()  # the undecodable byte is written back as is
    conf.insert(0, "use os udp_receiver 239.9.9.9:9")
    conf.write(str(path))
    again = ConfFile.read(path)
    assert again.rules == conf.rules
    assert again.format() == conf.format()
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libxlio.conf"]  # no temp left
    fresh = tmp_path / "new.conf"
    conf.write(fresh, canonical=True)
    assert ConfFile.read(fresh).rules == conf.rules
    assert "USE XLIO" not in fresh.read_text("utf-8", "surrogateescape")


def test_conffile_bytes_that_are_not_utf8_survive(tmp_path: Path) -> None:
    raw = b"# \xff\xfe latin-1 \xe9\nuse vma udp_receiver *:1\n"
    path = tmp_path / "x.conf"
    path.write_bytes(raw)
    conf = ConfFile.read(path)
    conf.write(path)
    assert path.read_bytes() == raw


def test_conffile_write_is_atomic_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "libxlio.conf"
    path.write_text("use os udp_receiver *:1\n")
    conf = ConfFile.parse("use vma udp_receiver *:2\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        conf.write(path)
    assert path.read_text() == "use os udp_receiver *:1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libxlio.conf"]


def test_conffile_type_errors() -> None:
    with pytest.raises(TypeError, match="bytes"):
        ConfFile.parse(b"use os udp_receiver *:1\n")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Import hygiene (XLIO's allocator registration must come before socket & co. are imported)


def test_module_imports_no_socket_machinery() -> None:
    path = Path(rules_module.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('rules_probe', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['rules_probe'] = module\n"
        "spec.loader.exec_module(module)\n"
        "module.Rule.parse('use vma udp_receiver 239.1.1.1:5000').matches("
        "'udp_receiver', local=('239.1.1.1', 5000))\n"
        "bad = [m for m in ('socket', 'selectors', 'asyncio', 'subprocess') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""

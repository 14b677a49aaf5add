"""The normal form write routing matches on (``pgshift.traffic.proxy.paths``)."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgshift.traffic.proxy.paths import BadTarget, compile_globs, normal_path, origin_form


def reference(target: bytes) -> str:
    """The normal form spelled out step by step, without the fast path."""
    raw = origin_form(target).split(b"?", 1)[0].split(b"#", 1)[0]
    out: list[str] = []
    for seg in unquote_to_bytes(raw).decode("latin-1").split("/"):
        seg = seg.split(";", 1)[0]
        if seg == "..":
            out = out[:-1]
        elif seg not in ("", "."):
            out.append(seg)
    return "/" + "/".join(out)


@pytest.mark.parametrize(("target", "normal"), [
    (b"/api/1/%63laim", "/api/1/claim"),
    (b"/api/1/claim/", "/api/1/claim"),
    (b"/api/1/claim;jsessionid=1", "/api/1/claim"),
    (b"//api//1/claim", "/api/1/claim"),
    (b"/static/../api/1/claim", "/api/1/claim"),
    (b"/api/1/x/..;/claim", "/api/1/claim"),
    (b"/api/1%2Fclaim", "/api/1/claim"),
    (b"/../../etc", "/etc"),
    (b"http://h:80/api/1/claim?x=1", "/api/1/claim"),
    (b"HTTPS://h", "/"),
    (b"/a?b/../c", "/a"),
    (b"/a/.well-known/x", "/a/.well-known/x"),
    (b"/", "/"),
])
def test_normal_form(target: bytes, normal: str) -> None:
    assert normal_path(target) == normal


@pytest.mark.parametrize("target", [b"ftp://x/y", b"api/1", b"", b"\\api"])
def test_targets_that_are_no_path_are_refused(target: bytes) -> None:
    with pytest.raises(BadTarget):
        normal_path(target)


PATHS = st.lists(st.sampled_from(["a", "api", "claim", ".", "..", "", "%63", "%2F", ";x",
                                  "b;p=1", "%2e%2e", "?q", "#f"]), max_size=8)


@given(PATHS)
def test_fast_path_agrees_with_the_reference(parts: list[str]) -> None:
    target = ("/" + "/".join(parts)).encode()
    assert normal_path(target) == reference(target)


def test_globs_match_like_fnmatch_in_normal_form() -> None:
    rx = compile_globs(("/api/*/claim/", "/admin"))
    assert rx.match("/api/1/claim") and rx.match("/api/1/2/claim") and rx.match("/admin")
    assert not rx.match("/api/1/claims") and not rx.match("/administrator")

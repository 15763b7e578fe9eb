"""Bad client input over SSH exec (``hg -R r serve --stdio``), as over HTTP: each probe
of the security review gets a protocol error naming the argument (an out-of-band error,
or the push's own error form), one ``info`` line in the log naming the command and the
argument, no traceback, and the session stays usable: each session here asks ``heads``
after the probe and gets it answered. A request stream that breaks the framing ends the
session cleanly, with one ``info`` line.

The probes come from alice, who may push (pushes are refused for their input, not for
permission); the repository is unchanged afterwards.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import repobuilders as rb
from tests.servers import RunningServer, running_server
from tests.sshclient import SSH, keygen, public_key, ssh_argv
from tests.test_http_bad_input import LogWatch, assert_one_bad_input_line

pytestmark = [
    pytest.mark.skipif(not os.path.exists(SSH), reason="OpenSSH client not installed"),
    pytest.mark.timeout(120),
]

CAPS = b"HG20,bundle2=HG20%0Achangegroup%3D01%2C02"
PREFIX = "v1 r {} from 127.0.0.1"


@dataclass
class Site:
    server: RunningServer
    key: Path
    repo: Path

    def session(self, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        """One ``hg -R r serve --stdio`` session fed ``stdin`` and then EOF."""
        argv = [
            *ssh_argv(self.key),
            "-p",
            str(self.server.ports["ssh"][0]),
            "-T",
            "alice@127.0.0.1",
            "hg -R r serve --stdio",
        ]
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=60, env=rb.hg_env())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, rich_repo_template: Path) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("sshbadinput")
    repo = tmp / "r"
    shutil.copytree(rich_repo_template, repo, symlinks=True)
    key = keygen(tmp / "alice")
    access = tmp / "access.toml"
    access.write_text(
        f'[users.alice]\nkeys = ["{public_key(key)}"]\n'
        '[[rules]]\nrepos = "*"\nread = ["*"]\nwrite = ["alice"]\n',
        encoding="utf-8",
    )
    args = ("--repo", f"r={repo}", "--access", str(access), "--ssh", "tcp:0:interface=127.0.0.1")
    with running_server(tmp, *args, "--log-level", "info", http="none") as server:
        yield Site(server=server, key=key, repo=repo)


def request(name: bytes, args: dict[bytes, bytes], *, star: bool = False) -> bytes:
    """A v1 SSH request: the name, then each argument as ``key length\\nvalue`` (with a
    ``* count`` line first for a command taking ``*``)."""
    out = [name + b"\n", b"* %d\n" % len(args) if star else b""]
    out += [b"%s %d\n%s" % (key, len(value), value) for key, value in sorted(args.items())]
    return b"".join(out)


def push(heads: bytes, payload: bytes) -> bytes:
    """``unbundle`` sent ahead with its payload framed (the server asks for it first)."""
    frames = b"".join(
        b"%d\n%s" % (len(payload[i : i + 4096]), payload[i : i + 4096])
        for i in range(0, len(payload), 4096)
    )
    return request(b"unbundle", {b"heads": heads}) + frames + b"0\n"


@pytest.fixture(scope="module")
def heads_answer(site: Site) -> bytes:
    """What ``heads`` alone answers: the tail every probe's session must end with."""
    plain = site.session(b"heads\n")
    assert plain.returncode == 0 and plain.stdout.endswith(b"\n"), plain
    return plain.stdout


def test_bad_v1_arguments_over_ssh(site: Site, heads_answer: bytes) -> None:
    """getbundle heads=zz / 41 hex digits / 100k bundlecaps / includepats=../..,
    changegroupsubset with 5,000 random bases: an out-of-band error naming the argument
    each, one info line, then ``heads`` is answered; a getbundle without bundlecaps gets
    its bundle1 changegroup."""
    head = rb.log_nodes(site.repo, "max(not secret())")[0].encode()
    random_bases = b" ".join(os.urandom(20).hex().encode() for _ in range(5000))
    cases = [
        (b"getbundle", {b"bundlecaps": CAPS, b"heads": b"zz"}, b"heads"),
        (b"getbundle", {b"bundlecaps": CAPS, b"heads": head + b"a"}, b"heads"),
        (
            b"getbundle",
            {b"heads": head, b"bundlecaps": b",".join(b"c%d" % i for i in range(100_000))},
            b"bundlecaps",
        ),
        (
            b"getbundle",
            {b"bundlecaps": CAPS, b"heads": head, b"includepats": b"path:../../etc"},
            b"includepats",
        ),
        (b"changegroupsubset", {b"bases": random_bases, b"heads": head}, b"bases"),
    ]
    watch = LogWatch(site.server)
    for name, args, named in cases:
        done = site.session(request(name, args, star=name == b"getbundle") + b"heads\n")
        assert done.returncode == 0, (name, named, done.stderr)
        # the out-of-band error: its text on stderr, an empty line on stdout
        assert b"argument " + named in done.stderr, (name, named, done.stderr)
        assert done.stdout == b"\n" + heads_answer, (name, named, done.stdout[:200])
        assert_one_bad_input_line(watch.new(), PREFIX.format(name.decode()), named)

    bundle1 = site.session(request(b"getbundle", {b"heads": head}, star=True) + b"heads\n")
    assert bundle1.returncode == 0 and bundle1.stdout.endswith(heads_answer)
    assert b"def f():" in bundle1.stdout  # src/util.py in a raw changegroup
    assert not any("bad input" in line for line in watch.new())


def test_bad_pushes_over_ssh(site: Site, heads_answer: bytes) -> None:
    """unbundle heads=zz and garbage HG10GZ/HG10BZ bundles: the failed-push reply
    naming the argument (what hg prints after 'push failed:'); a bundle2 push with
    heads=zz: a bundle2 error:abort reply. One info line each, the repository unchanged,
    then ``heads`` is answered."""
    from mercurial import bundle2

    from hgwire_tw.repo.ui import make_ui

    before = rb.repo_summary(site.repo)
    cases = [
        (b"zz", b"HG10UN", b"argument heads", PREFIX.format("unbundle")),
        (
            b"666f726365",
            b"HG10GZ" + os.urandom(2000),
            b"invalid push bundle",
            PREFIX.format("unbundle"),
        ),
        (
            b"666f726365",
            b"HG10BZ" + os.urandom(2000),
            b"invalid push bundle",
            PREFIX.format("unbundle"),
        ),
        (b"zz", b"HG20\0\0\0\0\0\0\0\0", b"argument heads", "unbundle into "),
    ]
    watch = LogWatch(site.server)
    for heads, payload, named, prefix in cases:
        done = site.session(push(heads, payload) + b"heads\n")
        assert done.returncode == 0, (named, done.stderr)
        assert done.stdout.startswith(b"0\n") and done.stdout.endswith(heads_answer), done.stdout
        reply = done.stdout[2 : -len(heads_answer)]
        if payload.startswith(b"HG20"):
            parts = bundle2.getunbundler(make_ui(), io.BytesIO(reply)).iterparts()
            (abort,) = [(p.type, dict(p.params)) for p in parts]
            assert abort[0] == b"error:abort" and named in abort[1][b"message"], abort
        else:
            length, _, message = reply.partition(b"\n")
            assert int(length) == len(message) and named in message, reply
        assert_one_bad_input_line(watch.new(), prefix, named)
    assert rb.repo_summary(site.repo) == before


def test_broken_request_stream_ends_the_session_cleanly(site: Site) -> None:
    """An argument length that is no number: the session ends with a message and exit
    status 1, one info line, no traceback."""
    watch = LogWatch(site.server)
    done = site.session(b"lookup\nkey notanumber\nheads\n")
    assert done.returncode == 1 and b"hgwire: protocol error" in done.stderr, done
    lines = watch.new()
    about = [line for line in lines if "protocol error" in line]
    assert len(about) == 1 and "#info]" in about[0] and "session of alice" in about[0], lines
    assert not any("Traceback" in line or "#error]" in line for line in lines), lines

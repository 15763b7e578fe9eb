"""SSH transport pieces in isolation: exec parsing, names, algorithms, host keys, auth,
the v1 session loop and the channel's flow control (no sockets, no reactor)."""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519, rsa
from twisted.conch import error as conch_error
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import NS
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hgwire_tw.access import AccessPolicy
from hgwire_tw.authorized_keys import KeyScope
from hgwire_tw.context import ServerContext, Settings
from hgwire_tw.repo.registry import RepositoryRegistry, ServedRepository
from hgwire_tw.transports.ssh import make_ssh_factory
from hgwire_tw.transports.ssh_auth import PublicKeyPortal
from hgwire_tw.transports.ssh_command import (
    ExecRefused,
    parse_exec_command,
    repository_name,
)
from hgwire_tw.transports.ssh_keys import HOST_KEY_NAME, HostKeyError, load_host_keys
from hgwire_tw.transports.ssh_session import HgSessionChannel, HgwireAvatar, open_repository
from hgwire_tw.transports.ssh_v1 import V1SSHSession
from hgwire_tw.v1.call import StreamFormats, V1Call
from hgwire_tw.v1.results import V1OutOfBandError

# -- exec commands and names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "path"),
    [
        (b"hg -R team/proj serve --stdio", "team/proj"),
        (b"/usr/local/bin/hg -R /abs serve --stdio", "/abs"),
        (b"hg -R 'with space' serve --stdio", "with space"),
        (b"hg -R 'it'\\''s' serve --stdio", "it's"),
        (b"'hg' -R . serve --stdio", "."),
    ],
)
def test_exec_command_accepted(command: bytes, path: str) -> None:
    """Exactly 'hg -R <path> serve --stdio', shell-quoted as hg quotes it, is accepted."""
    assert parse_exec_command(command) == path


@pytest.mark.parametrize(
    "command",
    [
        b"",
        b"sh",
        b"bash -c 'hg -R x serve --stdio'",
        b"hg -R x serve --stdio --hidden",
        b"hg -R x serve",
        b"hg --repository x serve --stdio",
        b"hg --config a.b=c -R x serve --stdio",
        b"hg -R x serve --stdio; rm -rf /",
        b"hgx -R x serve --stdio",
        b"hg -R 'x serve --stdio",
        b"hg -R x\0 serve --stdio",
        b"hg -R \xff serve --stdio",
        b"hg -R " + b"x" * 5000 + b" serve --stdio",
    ],
)
def test_exec_command_refused(command: bytes) -> None:
    """Anything else is refused with a message."""
    with pytest.raises(ExecRefused) as info:
        parse_exec_command(command)
    assert str(info.value)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("team/proj", "team/proj"),
        ("/team/proj", "team/proj"),
        ("team/proj/", "team/proj"),
        (".", ""),
        ("", ""),
        ("/", ""),
        ("//etc", "/etc"),
        ("../x", "../x"),
    ],
)
def test_repository_name(path: str, name: str) -> None:
    """One leading slash is dropped; '.' is the root; the rest is left to the registry."""
    assert repository_name(path) == name


# -- fixtures --------------------------------------------------------------------------------


def _openssh_public(key: Any) -> str:
    return keys.Key(key.public_key()).toString("openssh").decode()


class FakePool:
    """``RepositoryPool.iterate`` answering a ``V1Call`` from a table instead of running
    Mercurial."""

    def __init__(self, answer: Callable[[V1Call], list[object]]) -> None:
        self.answer = answer
        self.calls: list[bytes] = []
        #: the response formats each command was run with
        self.choices: list[StreamFormats] = []
        self.hold: Deferred[None] | None = None

    def iterate(
        self,
        served: Any,
        gen_fn: Any,
        args: Any,
        deliver: Any,
        *,
        write: bool = False,
        lane: Any = None,
    ) -> Deferred[None]:
        (call,) = args
        assert isinstance(call, V1Call)
        self.calls.append(call.name)
        self.choices.append(call.formats)
        batch = self.answer(call)

        def run(_: object = None) -> None:
            deliver(batch)

        if self.hold is not None:
            d, self.hold = self.hold, None
            return d.addCallback(run)
        run()
        return succeed(None)


def _context(tmp_path: Path, pool: Any = None, *, reactor: Any = None) -> ServerContext:
    alice = ed25519.Ed25519PrivateKey.generate()
    bob = ed25519.Ed25519PrivateKey.generate()
    repo = tmp_path / "repo"
    (repo / ".hg").mkdir(parents=True)
    access = tmp_path / "access.toml"
    access.write_text(
        f"""
[users.alice]
keys = ['from="127.0.0.1" {_openssh_public(alice)}']
[users.bob]
keys = ["{_openssh_public(bob)}"]
[[rules]]
repos = "*"
read = ["*"]
write = ["alice"]
""",
        encoding="utf-8",
    )
    ctx = ServerContext(
        reactor=reactor or Clock(),
        registry=RepositoryRegistry({"proj": repo}),
        pool=pool,
        access=AccessPolicy.load(access),
        settings=Settings(max_push_bytes=1000),
    )
    ctx.test_keys = {"alice": alice, "bob": bob}  # type: ignore[attr-defined]
    return ctx


# -- algorithms and host keys ----------------------------------------------------------------


def test_only_modern_algorithms_offered(tmp_path: Path) -> None:
    """No CBC, no SHA-1/MD5 MACs, no SHA-1 key exchange, no ssh-rsa/ssh-dss signatures."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path = tmp_path / "rsa_key"
    rsa_path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    ctx = _context(tmp_path)
    ctx.settings.ssh_host_keys = (str(rsa_path),)
    factory = make_ssh_factory(ctx, tmp_path / "state")
    factory.startFactory()
    t = factory.buildProtocol(None)
    assert t.supportedCiphers and all(b"cbc" not in c for c in t.supportedCiphers)
    assert all(b"3des" not in c for c in t.supportedCiphers)
    assert set(t.supportedMACs) <= {b"hmac-sha2-512", b"hmac-sha2-256"}
    assert t.supportedKeyExchanges and all(b"sha1" not in k for k in t.supportedKeyExchanges)
    assert b"curve25519-sha256" in t.supportedKeyExchanges
    assert t.supportedPublicKeys == [b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"]
    assert set(factory.privateKeys) == {b"ssh-ed25519", b"ssh-rsa"}


def test_host_key_generated_once_with_mode_0600(tmp_path: Path) -> None:
    """The ed25519 host key is created 0600 on first start and reused afterwards."""
    state = tmp_path / "state"
    first = load_host_keys(state)
    path = state / HOST_KEY_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first[0].type() == "Ed25519" and not first[0].isPublic()
    second = load_host_keys(state)
    assert second[0].fingerprint() == first[0].fingerprint()
    pub = (state / (HOST_KEY_NAME + ".pub")).read_text()
    assert pub.startswith("ssh-ed25519 ")


def test_dsa_and_missing_host_keys_refused(tmp_path: Path) -> None:
    """A DSA host key or an unreadable file is a clear configuration error."""
    dsa_key = dsa.generate_private_key(key_size=1024)
    path = tmp_path / "dsa_key"
    path.write_bytes(
        dsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(HostKeyError, match="DSA"):
        load_host_keys(tmp_path / "state", [path])
    with pytest.raises(HostKeyError, match="nosuch"):
        load_host_keys(tmp_path / "state", [tmp_path / "nosuch"])


# -- authentication --------------------------------------------------------------------------


def _login(
    ctx: ServerContext,
    login: bytes,
    key: Any,
    *,
    address: str = "127.0.0.1",
    sign: bool = True,
    portal: PublicKeyPortal | None = None,
    algorithm: bytes | None = None,
) -> Any:
    if portal is None:
        portal = PublicKeyPortal(lambda: ctx.access, lambda u, h, s: HgwireAvatar(ctx, u, h, s))
    portal = portal.for_address(address)
    conch_key = keys.Key(key)
    blob = conch_key.public().blob()
    data = b"session-data"
    algorithm = algorithm or conch_key.sshType()
    signature = conch_key.sign(data, signatureType=algorithm) if sign else None
    creds = SSHPrivateKey(login, algorithm, blob, data if sign else None, signature)
    results: list[Any] = []
    portal.login(creds, None, IConchUser).addBoth(results.append)
    return results[0]


def test_auth_accepts_owner_and_generic_login(tmp_path: Path) -> None:
    """The owner's login, or a login name that is no user, authenticates as the key's owner."""
    ctx = _context(tmp_path)
    bob = ctx.test_keys["bob"]  # type: ignore[attr-defined]
    iface, avatar, _logout = _login(ctx, b"bob", bob)
    assert iface is IConchUser and avatar.user == "bob"
    _, avatar, _ = _login(ctx, b"hg", bob)
    assert avatar.user == "bob"


def test_auth_refusals(tmp_path: Path) -> None:
    """Unknown keys, another user's key, from= mismatches and unsigned probes."""
    ctx = _context(tmp_path)
    alice, bob = ctx.test_keys["alice"], ctx.test_keys["bob"]  # type: ignore[attr-defined]
    stranger = ed25519.Ed25519PrivateKey.generate()
    assert _login(ctx, b"bob", stranger).check(UnauthorizedLogin)
    assert _login(ctx, b"alice", bob).check(UnauthorizedLogin)
    assert _login(ctx, b"alice", alice, address="10.0.0.1").check(UnauthorizedLogin)
    assert _login(ctx, b"alice", alice)[1].user == "alice"
    # A probe without signature for an acceptable key: Conch answers PK_OK.
    assert _login(ctx, b"bob", bob, sign=False).check(conch_error.ValidPublicKey)
    assert _login(ctx, b"bob", stranger, sign=False).check(UnauthorizedLogin)


def test_rsa_keys_sign_with_sha2_only(tmp_path: Path) -> None:
    """An RSA user key logs in with rsa-sha2-512/256 signatures; its SHA-1 ssh-rsa
    signature is refused even though it verifies."""
    ctx = _context(tmp_path)
    rita = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    access = tmp_path / "rsa.toml"
    user = f'[users.rita]\nkeys = ["{_openssh_public(rita)}"]\n'
    access.write_text(user + '[[rules]]\nrepos = "*"\nread = ["*"]\n', encoding="utf-8")
    ctx.access = AccessPolicy.load(access)
    for algorithm in (b"rsa-sha2-512", b"rsa-sha2-256"):
        assert _login(ctx, b"rita", rita, algorithm=algorithm)[1].user == "rita"
    refused = _login(ctx, b"rita", rita, algorithm=b"ssh-rsa")
    assert refused.check(UnauthorizedLogin), refused


def test_logins_follow_a_reloaded_access_file(tmp_path: Path) -> None:
    """The portal reads the current policy at each login (SIGHUP replaces ctx.access), and
    the avatar carries the key's hg-ssh scope."""
    ctx = _context(tmp_path)
    portal = make_ssh_factory(ctx, tmp_path / "state").portal  # made once, at start
    newcomer = ed25519.Ed25519PrivateKey.generate()
    assert _login(ctx, b"carol", newcomer, portal=portal).check(UnauthorizedLogin)
    reloaded = tmp_path / "reloaded.toml"
    reloaded.write_text(
        "[users.carol]\n"
        f"keys = ['command=\"hg-ssh --read-only proj\" {_openssh_public(newcomer)}']\n"
        '[[rules]]\nrepos = "*"\nread = ["*"]\nwrite = ["carol"]\n',
        encoding="utf-8",
    )
    ctx.access = AccessPolicy.load(reloaded)
    _, avatar, _ = _login(ctx, b"carol", newcomer, portal=portal)
    assert avatar.user == "carol"
    assert avatar.scope == KeyScope(repos=frozenset({"proj"}), read_only=True)
    bob = ctx.test_keys["bob"]  # type: ignore[attr-defined]
    assert _login(ctx, b"bob", bob, portal=portal).check(UnauthorizedLogin)


def test_default_policy_admits_nobody(tmp_path: Path) -> None:
    """Without an access file there are no keys: SSH admits no one."""
    ctx = _context(tmp_path)
    ctx.access = AccessPolicy.default()
    assert _login(ctx, b"bob", ctx.test_keys["bob"]).check(UnauthorizedLogin)  # type: ignore[attr-defined]


# -- the v1 session loop ---------------------------------------------------------------------


class FakeOutput:
    """A ``SessionOutput`` recording what the session sends."""

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.status: int | None = None
        self.pending: Deferred[None] | None = None

    def write(self, data: bytes) -> None:
        assert self.status is None
        self.stdout += data

    def write_stderr(self, data: bytes) -> None:
        self.stderr += data

    def drained(self) -> Deferred[None] | None:
        return self.pending

    def finish(self, status: int) -> None:
        assert self.status is None
        self.status = status

    def abort(self) -> None:
        self.aborted = True


def _answers(call: V1Call) -> list[object]:
    from hgwire_tw.v1.results import V1Bytes, V1ProtoCaps, V1PushResult

    if call.name == b"unbundle":
        payload = call.facts.payload
        pushed = b"".join(payload.pieces()) if payload is not None else b""
        return [V1PushResult(result=1 if pushed == b"BUNDLE" else 0)]
    if call.name == b"protocaps":
        # what Mercurial's command does to the session, as the runner reports it
        return [V1Bytes(data=b"OK"), V1ProtoCaps(value=call.args[b"caps"])]  # type: ignore[arg-type]
    return [V1Bytes(data=b"answer:" + call.name)]


def _session(tmp_path: Path, user: str = "alice") -> tuple[V1SSHSession, FakeOutput, FakePool]:
    pool = FakePool(_answers)
    ctx = _context(tmp_path, pool)
    out = FakeOutput()
    served = ServedRepository("proj", tmp_path / "repo")
    return V1SSHSession(ctx, out, served, user), out, pool


class V1SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        import tempfile

        self.tmp = Path(tempfile.mkdtemp())

    def test_unknown_and_upgrade_lines_get_empty_answer(self) -> None:
        """The dead upgrade handshake and unknown commands are answered '0\\n'."""
        session, out, _ = _session(self.tmp)
        session.dataReceived(b"upgrade abc proto=exp-ssh-v2-0003\nnosuch\nheads\n")
        self.assertEqual(out.stdout, b"0\n0\n12\nanswer:heads")
        session.dataReceived(b"\n")
        self.assertEqual(out.status, 0)

    def test_push_spooled_then_run(self) -> None:
        """unbundle: '0\\n' asks for the payload, which reaches the command whole."""
        session, out, pool = _session(self.tmp)
        session.dataReceived(b"unbundle\nheads 10\n666f726365")
        self.assertEqual(out.stdout, b"0\n")
        session.dataReceived(b"3\nBUN3\nDLE")
        self.assertEqual(pool.calls, [])
        session.dataReceived(b"0\n")
        self.assertEqual(pool.calls, [b"unbundle"])
        self.assertEqual(out.stdout, b"0\n0\n1\n1")

    def test_read_only_push_refused_before_payload(self) -> None:
        """bob's unbundle is an out-of-band error; the session goes on."""
        session, out, pool = _session(self.tmp, user="bob")
        session.dataReceived(b"unbundle\nheads 10\n666f726365heads\n")
        self.assertEqual(pool.calls, [b"heads"])
        self.assertIn(b"permission denied", out.stderr)
        self.assertTrue(out.stderr.endswith(b"\n-\n"))
        self.assertEqual(out.stdout, b"\n12\nanswer:heads")

    def _failing_push(self, payload: bytes) -> FakeOutput:
        from twisted.internet.defer import fail

        session, out, pool = _session(self.tmp)
        iterate = pool.iterate

        def failing(served: Any, gen_fn: Any, args: Any, deliver: Any, **kw: Any) -> Any:
            if args[0].name == b"unbundle":
                return fail(RuntimeError("the worker blew up"))
            return iterate(served, gen_fn, args, deliver, **kw)

        pool.iterate = failing  # type: ignore[method-assign]
        session.dataReceived(b"unbundle\nheads 10\n666f726365")
        session.dataReceived(b"%d\n%s0\n" % (len(payload), payload))
        session.dataReceived(b"heads\n")  # the session goes on after the failed push
        return out

    def test_failed_bundle2_push_gets_a_bundle2_error_reply(self) -> None:
        """A bundle2 push whose job raises outside Mercurial's unbundle (before: an
        out-of-band error the client never reads, so it waited forever) gets a bundle2
        reply with an error:abort part."""
        import io

        from mercurial import bundle2

        from hgwire_tw.repo.ui import make_ui

        self.flushLoggedErrors(RuntimeError)
        out = self._failing_push(b"HG20\0\0\0\0\0\0\0\0")
        self.flushLoggedErrors(RuntimeError)
        self.assertTrue(out.stdout.startswith(b"0\nHG20"))
        unbundler = bundle2.getunbundler(make_ui(), io.BytesIO(out.stdout[2:]))
        parts = [(p.type, dict(p.params)) for p in unbundler.iterparts()]
        self.assertEqual([t for t, _ in parts], [b"error:abort"])
        self.assertIn(b"internal server error (incident", parts[0][1][b"message"])
        self.assertIsNone(out.status)

    def test_failed_bundle1_push_gets_the_failed_push_frame(self) -> None:
        """The same for a bundle1 push: one non-empty reply frame (hg prints 'push
        failed:'), then the next command is answered."""
        out = self._failing_push(b"HG10UN")
        self.flushLoggedErrors(RuntimeError)
        self.assertRegex(out.stdout, rb"^0\n\d+\ninternal server error \(incident \w+ in")
        self.assertTrue(out.stdout.endswith(b"12\nanswer:heads"))

    def _push_revoked_midway(self, payload: bytes) -> tuple[FakeOutput, FakePool]:
        """alice pushes ``payload``; the access file is reloaded while it arrives and
        no longer lets her push, so the worker's permission check refuses the run."""
        from twisted.internet.defer import maybeDeferred

        from hgwire_tw.v1.protocol import V1Protocol

        session, out, pool = _session(self.tmp)
        iterate = pool.iterate

        def run(served: Any, gen_fn: Any, args: Any, deliver: Any, **kw: Any) -> Any:
            (call,) = args
            if call.name == b"unbundle":
                pool.calls.append(b"unbundle")
                # what the runner does first on the worker: check the call's grant
                return maybeDeferred(V1Protocol(call.facts).checkperm, b"push")
            return iterate(served, gen_fn, args, deliver, **kw)

        pool.iterate = run  # type: ignore[method-assign]
        session.dataReceived(b"unbundle\nheads 10\n666f726365")
        session.dataReceived(b"%d\n%s" % (len(payload), payload))
        reloaded = self.tmp / "read-only.toml"
        reloaded.write_text('[[rules]]\nrepos = "*"\nread = ["*"]\n', encoding="utf-8")
        session.ctx.access = AccessPolicy.load(reloaded)
        session.dataReceived(b"0\n")
        session.dataReceived(b"heads\n")  # the session goes on after the refused push
        return out, pool

    def test_bundle2_push_revoked_midway_gets_a_bundle2_error_reply(self) -> None:
        """Permission withdrawn between the payload and the run (before: an out-of-band
        error, which a bundle2 client never reads): a bundle2 reply that Mercurial reads
        as error:abort naming the refusal."""
        import io

        from mercurial import bundle2

        from hgwire_tw.repo.ui import make_ui

        out, pool = self._push_revoked_midway(b"HG20\0\0\0\0\0\0\0\0")
        self.assertEqual(pool.calls, [b"unbundle", b"heads"])
        self.assertTrue(out.stdout.startswith(b"0\nHG20"), out.stdout)
        self.assertTrue(out.stdout.endswith(b"12\nanswer:heads"), out.stdout)
        reply = out.stdout[2 : -len(b"12\nanswer:heads")]
        unbundler = bundle2.getunbundler(make_ui(), io.BytesIO(reply))
        parts = [(p.type, dict(p.params)) for p in unbundler.iterparts()]
        self.assertEqual([t for t, _ in parts], [b"error:abort"])
        self.assertEqual(
            parts[0][1][b"message"],
            b"permission denied: user 'alice' may not push to repository 'proj'",
        )
        self.assertIsNone(out.status)

    def test_bundle1_push_revoked_midway_gets_the_failed_push_frame(self) -> None:
        """The same for a bundle1 push: the failed-push reply frame, then ``heads``."""
        out, _ = self._push_revoked_midway(b"HG10UN")
        message = b"permission denied: user 'alice' may not push to repository 'proj'\n"
        self.assertEqual(out.stdout, b"0\n%d\n%s12\nanswer:heads" % (len(message), message))

    def test_push_too_large(self) -> None:
        """A payload beyond max_push_bytes ends the session with exit status 1."""
        session, out, pool = _session(self.tmp)
        session.dataReceived(b"unbundle\nheads 10\n666f726365")
        session.dataReceived(b"2000\n" + b"x" * 2000)
        self.assertEqual(out.status, 1)
        self.assertIn(b"exceeds", out.stderr)
        self.assertEqual(pool.calls, [])

    def test_stalled_transfer_cuts_the_connection(self) -> None:
        """A command ended by the pool's stall timeout (the client stopped reading) ends
        the session and cuts the connection under it, without a traceback; the cut is
        logged at info, naming the user, repository and command."""
        from twisted.internet.defer import fail
        from twisted.logger import globalLogPublisher

        from hgwire_tw.repo.pool import StreamStalled

        session, out, pool = _session(self.tmp)
        pool.iterate = lambda *a, **kw: fail(StreamStalled(30))  # type: ignore[method-assign]
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            session.dataReceived(b"heads\n")
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertTrue(getattr(out, "aborted", False))
        self.assertEqual(out.status, 1)
        self.assertEqual(self.flushLoggedErrors(), [])
        cut = [e for e in events if "transfer cut" in e.get("log_format", "")]
        self.assertEqual(len(cut), 1)
        self.assertEqual(
            (cut[0]["user"], cut[0]["repo"], cut[0]["command"]), ("alice", "proj", "heads")
        )

    def test_eof_waits_for_inflight_command(self) -> None:
        """EOF after a request: the answer is sent first, then exit status 0."""
        session, out, pool = _session(self.tmp)
        pool.hold = Deferred()
        hold = pool.hold
        session.dataReceived(b"heads\n")
        session.eofReceived()
        self.assertIsNone(out.status)
        hold.callback(None)
        self.assertEqual(out.stdout, b"12\nanswer:heads")
        self.assertEqual(out.status, 0)

    def test_protocol_error(self) -> None:
        """Garbage after a command ends the session with a message and status 1."""
        session, out, _ = _session(self.tmp)
        session.dataReceived(b"lookup\nkey notanumber\n")
        self.assertEqual(out.status, 1)
        self.assertIn(b"protocol error", out.stderr)


# -- the channel: refusals, flow control, exit status ----------------------------------------


class SessionExtrasTests(SynchronousTestCase):
    """Response compression choice, the access lines, hg-ssh scopes."""

    def setUp(self) -> None:
        import tempfile

        from twisted.logger import formatEvent, globalLogPublisher

        self.tmp = Path(tempfile.mkdtemp())
        self.lines: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "hgwire_tw.transports.ssh_v1":
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def _getbundle_choice(self, session: V1SSHSession, pool: FakePool) -> StreamFormats:
        session.dataReceived(b"getbundle\n* 0\n")
        self.assertEqual(pool.calls[-1], b"getbundle")
        return pool.choices[-1]

    def _protocaps(self, session: V1SSHSession, caps: bytes) -> None:
        session.dataReceived(b"protocaps\ncaps %d\n%s" % (len(caps), caps))

    def test_getbundle_engine_follows_protocaps_and_server_order(self) -> None:
        """getbundle gets the first of the server's engines the client offered, as a
        bundle2 format (raw when the answer prefers it); other commands and clients
        that offered nothing get no format at all (raw, as before)."""
        session, _, pool = _session(self.tmp)
        self.assertEqual(self._getbundle_choice(session, pool), StreamFormats())
        self._protocaps(session, b"comp=zlib,zstd,none partial-pull")
        self.assertEqual(session.protocaps, b"comp=zlib,zstd,none partial-pull")
        formats = self._getbundle_choice(session, pool)
        fmt = formats.pick(False)
        assert fmt is not None and not isinstance(fmt, V1OutOfBandError)
        self.assertEqual((fmt.engine, fmt.level, fmt.bundle2), ("zstd", 3, True))
        raw = formats.pick(True)
        assert raw is not None and not isinstance(raw, V1OutOfBandError)
        self.assertEqual(raw.engine, "none")
        session.dataReceived(b"heads\n")
        self.assertEqual(pool.choices[-1], StreamFormats())
        session.ctx.settings = Settings(v1_compression=("zlib", "zstd"), zlib_level=9)
        fmt = self._getbundle_choice(session, pool).compressed
        assert fmt is not None and not isinstance(fmt, V1OutOfBandError)
        self.assertEqual((fmt.engine, fmt.level), ("zlib", 9))
        self._protocaps(session, b"comp=bzip2")
        self.assertEqual(self._getbundle_choice(session, pool), StreamFormats())

    def test_one_access_line_per_command(self) -> None:
        """Each command, unknown line and refused push leaves one line: address, user,
        repository, command, outcome, engine, bytes, seconds."""
        session, out, _ = _session(self.tmp, user="bob")
        session.dataReceived(b'no"such\x1b[31m\nheads\n')
        session.dataReceived(b"unbundle\nheads 10\n666f726365")
        self.assertEqual(
            self.lines[0:2],
            [
                '- bob "ssh proj no?such?[31m" unknown - 2 0.000s',
                '- bob "ssh proj heads" ok - 15 0.000s',
            ],
        )
        self.assertTrue(self.lines[-1].startswith('- bob "ssh proj unbundle" denied - '))
        self.assertEqual(len(self.lines), 4)  # and the refusal's own warning
        sent = sum(int(line.split()[-2]) for line in self.lines if '"ssh' in line)
        self.assertEqual(sent, len(out.stdout) + len(out.stderr))

    def test_client_gone_mid_command(self) -> None:
        """A command cut short by the client leaving is logged as gone."""
        session, _, pool = _session(self.tmp)
        pool.hold = Deferred()
        session.dataReceived(b"heads\n")
        self.assertEqual(self.lines, [])
        session.connectionLost()
        self.assertEqual(self.lines, ['- alice "ssh proj heads" gone - 0 0.000s'])

    def test_hg_ssh_scope_narrows_the_session(self) -> None:
        """alice may push by the rules; a --read-only key's session may not, and a scope
        without the repository does not even open it."""
        pool = FakePool(_answers)
        ctx = _context(self.tmp, pool)
        served = ServedRepository("proj", self.tmp / "repo")
        out = FakeOutput()
        read_only = KeyScope(repos=frozenset({"proj"}), read_only=True)
        session = V1SSHSession(ctx, out, served, "alice", scope=read_only)
        session.dataReceived(b"unbundle\nheads 10\n666f726365")
        self.assertIn(b"permission denied: user 'alice' may not push", out.stderr)
        self.assertEqual(pool.calls, [])
        grant = session._grant()
        self.assertEqual((grant.read, grant.write), (True, False))
        served, grant = open_repository(ctx, "alice", "proj", read_only)
        self.assertEqual((served.name, grant.read, grant.write), ("proj", True, False))
        elsewhere = KeyScope(repos=frozenset({"other"}))
        with self.assertRaises(ExecRefused):
            open_repository(ctx, "alice", "proj", elsewhere)


class FakeConn:
    """The parts of ``SSHConnection`` a channel calls."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def sendData(self, channel: Any, data: bytes) -> None:
        self.events.append(("data", data))

    def sendExtendedData(self, channel: Any, kind: int, data: bytes) -> None:
        self.events.append(("ext", kind, data))

    def sendRequest(self, channel: Any, kind: bytes, data: bytes, wantReply: int = 0) -> None:
        self.events.append(("request", kind, data))

    def sendEOF(self, channel: Any) -> None:
        self.events.append(("eof",))

    def sendClose(self, channel: Any) -> None:
        self.events.append(("close",))


class ChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        import tempfile

        self.clock = Clock()
        self.ctx = _context(Path(tempfile.mkdtemp()), FakePool(_answers), reactor=self.clock)
        avatar = HgwireAvatar(self.ctx, "bob", "127.0.0.1")
        self.channel = HgSessionChannel(
            remoteWindow=10, remoteMaxPacket=4, avatar=avatar, conn=FakeConn()
        )
        self.conn: FakeConn = self.channel.conn  # type: ignore[assignment]

    def test_window_is_the_configured_size(self) -> None:
        """The channel advertises Settings.ssh_window (2 MiB by default)."""
        self.assertEqual(self.channel.localWindowSize, 2 * 1024 * 1024)

    def test_exec_refusal_message_and_status(self) -> None:
        """A refused exec is accepted, then explained on stderr with exit status 1."""
        self.assertEqual(self.channel.request_exec(NS(b"hg -R ../x serve --stdio")), 1)
        self.clock.advance(0)
        self.assertNotIn("request", [e[0] for e in self.conn.events])  # window: 10 bytes
        self.channel.addWindowBytes(1000)
        self.clock.advance(0)
        ext = [e for e in self.conn.events if e[0] == "ext"]
        self.assertIn(b"not found", b"".join(e[2] for e in ext))
        self.assertIn(("request", b"exit-status", struct.pack(">L", 1)), self.conn.events)
        self.assertEqual(self.conn.events[-1], ("close",))

    def test_pty_env_and_unknown_subsystem_refused(self) -> None:
        """pty-req, env and other subsystems get a failure reply."""
        self.assertEqual(self.channel.request_pty_req(b""), 0)
        self.assertEqual(self.channel.request_env(NS(b"LANG") + NS(b"C")), 0)
        self.assertEqual(self.channel.request_subsystem(NS(b"sftp")), 0)
        self.assertEqual(self.channel.requestReceived(b"x11-req", b""), 0)

    def test_flow_control_and_exit_after_drain(self) -> None:
        """Output beyond the window waits; drained() fires after the window reopens (in a
        later turn, because Conch calls startWriting before flushing); exit status follows
        the last byte."""
        self.channel.write(b"0123456789abcdef")
        sent = b"".join(e[1] for e in self.conn.events if e[0] == "data")
        self.assertEqual(sent, b"0123456789")
        drained = self.channel.drained()
        assert drained is not None
        fired: list[object] = []
        drained.addCallback(fired.append)
        self.channel.finish(0)
        self.assertNotIn("request", [e[0] for e in self.conn.events])
        self.channel.addWindowBytes(100)
        self.assertEqual(fired, [])  # not before the buffer was flushed
        self.clock.advance(0)
        self.assertEqual(fired, [None])
        sent = b"".join(e[1] for e in self.conn.events if e[0] == "data")
        self.assertEqual(sent, b"0123456789abcdef")
        kinds = [e[0] for e in self.conn.events]
        self.assertEqual(kinds[-3:], ["request", "eof", "close"])

    def test_closed_cancels_waiters(self) -> None:
        """A channel closed by the client cancels pending drains (the producer stops)."""
        self.channel.write(b"x" * 20)
        drained = self.channel.drained()
        assert drained is not None
        failures: list[object] = []
        drained.addErrback(failures.append)
        self.channel.closed()
        self.assertEqual(len(failures), 1)

"""The web front end's pieces in-process: which requests are pages, the write gate that
holds a web thread while the client does not read, the refusals made before hgweb runs,
and the options."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from hgwire_tw.access import AccessPolicy
from hgwire_tw.context import ServerContext, Settings
from hgwire_tw.repo.registry import RepositoryRegistry, ServedRepository
from hgwire_tw.tap import Options
from hgwire_tw.web.app import ClientGone, HgwebApplication, Route, WireFirst, WriteGate
from hgwire_tw.web.resource import WebFrontEnd, is_web_request, page_name
from tests.repobuilders import init_repo


def request_for(uri: bytes, method: bytes = b"GET") -> DummyRequest:
    request = DummyRequest([])
    request.uri = uri
    request.path = uri.split(b"?", 1)[0]
    request.method = method
    return request


@pytest.mark.parametrize(
    "uri, page",
    [
        (b"/rich/shortlog", True),
        (b"/rich/file/tip/a?style=gitweb", True),
        (b"/rich?cmd=shortlog", True),  # old-style hgweb URL
        (b"/rich?cmd=capabilities", False),
        (b"/rich?cmd=branches", False),  # a wire command and a web command: wire wins
        (b"/rich?cmd=nosuch", False),  # the v1 path answers "no such method"
        (b"/rich?style=raw&cmd=getbundle", False),
        (b"/rich?cmd=shortlog&cmd=capabilities", False),  # hgweb would act on the last
        (b"/rich?cmd=capabilities&cmd=shortlog", False),
        (b"/.hgwire/anything", False),  # our own endpoints
        (b"/rich?cmd=%FF", False),  # any escape decodes (it once raised: a 500)
        (b"/rich?cmd=%73hortlog", True),
    ],
)
def test_is_web_request(uri: bytes, page: bool) -> None:
    """Pages are requests without a wire command in ?cmd=."""
    assert is_web_request(request_for(uri)) == page


def test_page_name_is_a_bounded_label() -> None:
    """hgweb's STYLE-COMMAND form is understood; anything else is 'other'."""
    served = ServedRepository(name="r", path=Path("/nonexistent"))
    assert page_name(served, []) == "summary"
    assert page_name(served, ["gitweb-shortlog"]) == "shortlog"
    assert page_name(served, ["raw-file", "tip", "a"]) == "file"
    assert page_name(served, ["archive", "tip.zip"]) == "archive"
    assert page_name(served, ["zip-archive", "tip"]) == "archive"
    assert page_name(served, ["x" * 500]) == "other"
    assert page_name(served, [], b"archive") == "archive"
    assert page_name(None, ["static", "a.css"]) == "static"
    assert page_name(None, ["team"]) == "index"


def test_write_gate_blocks_while_paused_and_ends_when_gone() -> None:
    """A paused gate holds the web thread until resumed; closing it wakes the thread
    with ClientGone."""
    gate = WriteGate()
    gate.wait()  # open: returns at once
    gate.pause()
    passed = threading.Event()

    def waiter() -> None:
        gate.wait()
        passed.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    thread.join(0.2)
    assert thread.is_alive() and not passed.is_set()
    gate.resume()
    thread.join(30)
    assert passed.is_set()
    gate.pause()
    gate.close()
    with pytest.raises(ClientGone):
        gate.wait()
    gate.resume()
    with pytest.raises(ClientGone):
        gate.wait()


class RecordingGate(WriteGate):
    """Counts waits; 'gone' after ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.waits = 0
        self.limit = limit

    def wait(self) -> None:
        self.waits += 1
        if self.waits > self.limit:
            self.close()
        super().wait()


class FakeApplication(HgwebApplication):
    """An HgwebApplication whose 'hgweb' yields three chunks and writes one."""

    def __init__(self) -> None:
        super().__init__(None, RepositoryRegistry({}), AccessPolicy.default())
        self.closed = False
        self.environ: dict[str, Any] = {}

    def _hgweb(self, served: ServedRepository) -> Any:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            self.environ = dict(environ)
            write = start_response("200 OK", [])
            write(b"written")

            def body() -> Any:
                try:
                    yield from (b"one", b"two", b"three")
                finally:
                    self.closed = True

            return body()

        return app


def test_serve_waits_for_the_client_before_every_chunk() -> None:
    """Every chunk and every write goes through the gate; once the client is gone the
    page stops quietly and hgweb's body is closed. The route decides PATH_INFO,
    REPO_NAME and REMOTE_USER, whatever the environ said."""
    app = FakeApplication()
    written: list[bytes] = []
    route = Route(
        served=ServedRepository(name="team/proj", path=Path("/x")),
        segments=("team", "proj", "shortlog"),
        user="alice",
    )
    gate = RecordingGate(limit=3)
    environ = {"PATH_INFO": "//evil", "REMOTE_USER": "root", "SCRIPT_NAME": "/x"}
    chunks = list(app.serve(route, gate, environ, lambda status, headers, exc=None: written.append))
    assert written == [b"written"]
    assert chunks == [b"one", b"two"]  # the 4th wait found the client gone
    assert gate.waits == 4 and app.closed
    assert app.environ["PATH_INFO"] == "/team/proj/shortlog"
    assert app.environ["REPO_NAME"] == "team/proj" and app.environ["SCRIPT_NAME"] == ""
    assert app.environ["REMOTE_USER"] == "alice"
    anonymous = Route(served=route.served, segments=route.segments, user=None)
    list(app.serve(anonymous, WriteGate(), {"REMOTE_USER": "root"}, lambda *a: written.append))
    assert "REMOTE_USER" not in app.environ


def front_end(tmp_path: Path, access: AccessPolicy | None = None) -> WebFrontEnd:
    init_repo(tmp_path / "r")
    ctx = ServerContext(
        reactor=None,
        registry=RepositoryRegistry({"r": tmp_path / "r"}),
        pool=None,  # type: ignore[arg-type]
        access=access or AccessPolicy.default(),
        settings=Settings(),
    )
    return WebFrontEnd(ctx, max_waiting=1)


def test_refusals_before_hgweb(tmp_path: Path) -> None:
    """Pages take GET/HEAD only; a query string hgweb cannot parse is 400; past
    threads + max_waiting pages the answer is 503;
    archives are refused unless enabled; a private page needs a login. None of these
    reach a web thread."""
    web = front_end(tmp_path)
    served = web.ctx.registry.resolve("r")
    request = request_for(b"/r/shortlog", b"POST")
    assert (
        web.render(request, ["r", "shortlog"], served, ["shortlog"])
        == b"web pages take GET or HEAD\n"
    )
    assert request.responseCode == 405
    request = request_for(b"/r/archive/tip.zip")
    assert (
        web.render(request, ["r", "archive", "tip.zip"], served, ["archive", "tip.zip"])
        == NOT_DONE_YET
    )
    assert request.responseCode == 403 and b"archives are disabled" in b"".join(request.written)
    # hgweb cannot parse escapes of non-ASCII bytes (it raised: a 500 and a traceback)
    for query in (b"?style=%FF", b"?x=%C3%A9", b"?a\xff=1"):
        request = request_for(b"/r/shortlog" + query)
        assert web.render(request, ["r", "shortlog"], served, ["shortlog"]).startswith(
            b"malformed query string"
        )
        assert request.responseCode == 400
    web.pages = web.max_pages
    request = request_for(b"/r/shortlog")
    web.render(request, ["r", "shortlog"], served, ["shortlog"])
    assert request.responseCode == 503
    assert request.responseHeaders.getRawHeaders(b"retry-after") == [b"1"]
    assert web.threadpool.q.qsize() == 0  # nothing was queued for a web thread

    private = AccessPolicy.from_mapping(
        {"users": {"alice": {}}, "rules": [{"repos": "*", "read": ["alice"]}]}, base=tmp_path
    )
    web = front_end(tmp_path / "p", private)
    request = request_for(b"/r/raw-file/tip/a")
    web.render(request, ["r", "raw-file", "tip", "a"], served, ["raw-file", "tip", "a"])
    assert request.responseCode == 401
    assert request.responseHeaders.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic")
    assert web.pages == 0 and web.threadpool.q.qsize() == 0


def parse(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_web_options(tmp_path: Path) -> None:
    """--web, --web-style, --web-archives, --metrics (and their TOML keys) reach the
    settings; bad values are usage errors."""
    init_repo(tmp_path / "r")
    repo = f"r={tmp_path / 'r'}"
    s = parse("--repo", repo).settings()
    assert (s.web, s.web_style, s.web_archives, s.metrics) == ("hgweb", "paper", False, "http")
    s = parse(
        "--repo", repo, "--web", "none", "--web-style", "gitweb", "--web-archives",
        "--metrics", "tcp:9100:interface=127.0.0.1",
    ).settings()  # fmt: skip
    assert (s.web, s.web_style, s.web_archives) == ("none", "gitweb", True)
    assert s.metrics == "tcp:9100:interface=127.0.0.1"
    config = tmp_path / "c.toml"
    config.write_text('web_style = "coal"\nweb_archives = true\nmetrics = "none"\n')
    s = parse("--repo", repo, "--config", str(config)).settings()
    assert (s.web_style, s.web_archives, s.metrics) == ("coal", True, "none")
    for bad in (["--web", "apache"], ["--web-style", "../paper"], ["--web-style", "raw"]):
        with pytest.raises(usage.UsageError):
            parse("--repo", repo, *bad)


class FakeClocks:
    """thread_time advances only when told; sleep records (and may end the busy spell)."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.slept: list[float] = []
        self.busy = True
        self.idle_after: int | None = None

    def thread_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        if self.idle_after is not None and len(self.slept) >= self.idle_after:
            self.busy = False


def pacer(clocks: FakeClocks, share: float) -> WireFirst:
    return WireFirst(lambda: clocks.busy, share, thread_time=clocks.thread_time, sleep=clocks.sleep)


def test_wire_first_paces_pages_only_while_the_wire_protocol_works() -> None:
    """With share 0.2, 10 ms of page CPU costs 40 ms of sleep, paid in 50 ms slices
    between chunks and before the next page, capped, and never once the wire is idle."""
    clocks = FakeClocks()
    pace = pacer(clocks, 0.2)
    pace.begin()
    clocks.cpu += 0.010
    pace.step()  # owes 0.04: less than a slice, carried
    assert clocks.slept == []
    clocks.cpu += 0.010
    pace.step()  # owes 0.08: paid now
    assert sum(clocks.slept) == pytest.approx(0.08)
    assert max(clocks.slept) <= 0.05
    clocks.cpu += 0.010
    pace.end()  # owes 0.04, paid before this thread's next page
    clocks.slept.clear()
    pace.begin()
    assert clocks.slept == [0.04]
    clocks.slept.clear()
    clocks.cpu += 10.0
    pace.end()
    pace.begin()  # 40 s owed, capped at max_pause (2 s)
    assert sum(clocks.slept) == pytest.approx(2.0)
    clocks.slept.clear()
    clocks.cpu += 1.0
    pace.end()
    clocks.idle_after = 2  # the clone ends during the second slice
    pace.begin()
    assert len(clocks.slept) == 2
    clocks.slept.clear()
    clocks.cpu += 1.0
    pace.step()
    pace.end()
    pace.begin()
    assert clocks.slept == []  # idle wire: pages run flat out

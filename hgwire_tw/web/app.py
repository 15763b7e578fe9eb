"""The WSGI side of the web pages: Mercurial's hgweb and hgwebdir, on web threads only.

Everything here runs on a thread of the web pool (``resource.WebFrontEnd``), after the
reactor thread has authenticated the caller and applied the access rules. A ``Route``
says what was decided: the served repository (None for the index and its static files),
the URL's path segments and the user.

- A repository page runs ``mercurial.hgweb.hgweb``, one per web thread and repository
  *object*: the object is ``RepositoryPool.repository(served)``, the pool's per-thread
  cache, which reopens it when the repository changed on disk. So no request opens a
  repository of its own, and no thread shares a repository object.
- The index is ``mercurial.hgweb.hgwebdir``'s template and static files, fed with the
  registry's repositories that the user may read (never a ``[paths]`` config); its rows
  come from each repository's ``.hg/hgrc`` and changelog mtime, without opening it.

hgweb's own access settings are overridden on every repository object it gets, so that
the service's access file alone decides, whatever a repository's ``.hg/hgrc`` says: no
``allow_read``/``deny_read`` (our rules were applied before hgweb runs, and a clone of
the same repository never asks them), no push (``allow-push`` empty, ``deny_push = *``:
pushes never reach hgweb anyway), archives only when the service enables them, the
service's style.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mercurial import templateutil
from mercurial.configuration import rcutil
from mercurial.hgweb import hgweb_mod, hgwebdir_mod, webutil
from mercurial.hgweb.common import get_contact, get_mtime, paritygen
from mercurial.utils import dateutil

from hgwire_tw.access import AccessPolicy
from hgwire_tw.core.errors import UnknownRepository
from hgwire_tw.repo.registry import RepositoryRegistry, ServedRepository
from hgwire_tw.repo.ui import make_ui

__all__ = ["ARCHIVE_TYPES", "ClientGone", "HgwebApplication", "Route", "WriteGate"]

#: What ``--web-archives`` offers (every type hgweb knows).
ARCHIVE_TYPES = tuple(t.decode("ascii") for t in webutil.archivespecs)

StartResponse = Callable[..., Callable[[bytes], Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """What the reactor thread decided for one request."""

    #: The repository the page belongs to; None for the index (and its static files).
    served: ServedRepository | None
    #: The URL path, split and unquoted (empty segments dropped).
    segments: tuple[str, ...]
    #: The logged-in user, None for anonymous.
    user: str | None


class ClientGone(Exception):
    """The client disconnected while the page was being written."""


class WriteGate:
    """How a web thread waits while the client is not reading (the thread side of the
    push producer ``resource.WebFrontEnd`` registers)."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.gone = False

    # reactor thread
    def pause(self) -> None:
        """The transport's buffer is full."""
        if not self.gone:
            self._open.clear()

    def resume(self) -> None:
        """The transport drained."""
        self._open.set()

    def close(self) -> None:
        """The client went away (or the service stops): wake the thread for good."""
        self.gone = True
        self._open.set()

    # web thread
    def wait(self) -> None:
        """Block while paused; raise ``ClientGone`` once the client is gone."""
        self._open.wait()
        if self.gone:
            raise ClientGone()


class WireFirst:
    """Keeps web threads to a small share of the CPU while the wire protocol is busy.

    All of the server's threads share one GIL (and here, often, few cores), so a page
    rendering loop would take half the interpreter from a running clone. While ``busy()``
    (the repository workers or the reactor's pool have work), each web thread, after
    spending ``t`` seconds of CPU (``time.thread_time``) on a page, sleeps
    ``t * (1 - share) / share`` before it goes on: between the chunks of a long page
    (archives, huge files), and before its next page. ``share`` is per thread. When the
    wire protocol is idle, pages run flat out.
    """

    def __init__(
        self,
        busy: Callable[[], bool],
        share: float,
        *,
        thread_time: Callable[[], float] = time.thread_time,
        sleep: Callable[[float], None] = time.sleep,
        max_pause: float = 2.0,
        slice_: float = 0.05,
    ) -> None:
        self.busy = busy
        self.factor = (1.0 - share) / share
        self.thread_time = thread_time
        self.sleep = sleep
        self.max_pause = max_pause
        self.slice = slice_
        self._local = threading.local()

    def _pay(self) -> None:
        debt = min(getattr(self._local, "debt", 0.0), self.max_pause)
        self._local.debt = 0.0
        # In slices, so that pages speed up again as soon as the clone is over.
        while debt > 0 and self.busy():
            step = min(debt, self.slice)
            self.sleep(step)
            debt -= step

    def _account(self) -> None:
        now = self.thread_time()
        used = now - getattr(self._local, "mark", now)
        self._local.mark = now
        if used > 0 and self.busy():
            self._local.debt = getattr(self._local, "debt", 0.0) + used * self.factor

    def begin(self) -> None:
        """Before a page: sleep off what earlier pages on this thread owe."""
        self._pay()
        self._local.mark = self.thread_time()

    def step(self) -> None:
        """Between two chunks of a page."""
        self._account()
        if getattr(self._local, "debt", 0.0) >= self.slice:
            self._pay()
            self._local.mark = self.thread_time()

    def end(self) -> None:
        """After a page: what it owes is paid before this thread's next page."""
        self._account()


def _wsgi_str(data: bytes) -> str:
    # PEP 3333: environ values are bytes decoded as latin-1.
    return data.decode("latin-1")


def _path_info(segments: Sequence[str]) -> str:
    return _wsgi_str(b"/" + "/".join(segments).encode("utf-8"))


class HgwebApplication:
    """The WSGI application the web pool runs (see the module docs)."""

    def __init__(
        self,
        pool: Any,
        registry: RepositoryRegistry,
        access: Callable[[], AccessPolicy],
        *,
        style: str = "paper",
        archives: bool = False,
        ui_factory: Callable[[], Any] = make_ui,
        wire_first: WireFirst | None = None,
    ) -> None:
        """``pool`` is the ``RepositoryPool`` whose per-thread repositories hgweb reuses;
        the index lists ``registry``'s repositories that the policy ``access()`` returns
        lets the user read. It is asked on every index request, never kept: a reload
        (SIGHUP) replaces the service's policy, and the next index must follow it."""
        self.pool = pool
        self.registry = registry
        self.access = access
        self.style = style.encode("ascii")
        self.archives = archives
        self.ui_factory = ui_factory
        self.wire_first = wire_first
        self._local = threading.local()

    # -- configuration forced on everything hgweb sees -----------------------------------

    def _web_config(self) -> list[tuple[bytes, bytes, bytes]]:
        archives = b" ".join(t.encode() for t in ARCHIVE_TYPES) if self.archives else b""
        config = [
            (b"web", b"style", self.style),
            (b"web", b"allow-archive", archives),
            (b"web", b"allow-push", b""),
            (b"web", b"deny_push", b"*"),
            (b"web", b"allow_read", b""),
            (b"web", b"deny_read", b""),
        ]
        # The legacy per-type switches (allowgz, allowzip, allowbz2) would re-enable them.
        config += [(b"web", b"allow" + t.encode(), b"false") for t in ARCHIVE_TYPES]
        return config

    def _configure(self, ui: Any) -> None:
        for section, name, value in self._web_config():
            ui.setconfig(section, name, value, b"hgwire")

    # -- repository pages -----------------------------------------------------------------

    def _hgweb(self, served: ServedRepository) -> Any:
        repo = self.pool.repository(served)
        apps: dict[str, tuple[Any, Any]] = self._local.__dict__.setdefault("apps", {})
        key = os.fspath(served.path)
        entry = apps.get(key)
        if entry is not None and entry[0] is repo:
            return entry[1]
        # hgweb reopens the repository itself (from ``baseui``) if it changes under it, so
        # both uis carry the overrides.
        self._configure(repo.ui)
        self._configure(repo.baseui)
        # A name keeps hgweb from showing the repository's filesystem path as its title.
        name = repo.ui.config(b"web", b"name") or (served.name or os.path.basename(key)).encode(
            "utf-8"
        )
        app = hgweb_mod.hgweb(repo, name=name)
        apps[key] = (repo, app)
        return app

    # -- the WSGI entry point ---------------------------------------------------------------

    def serve(
        self, route: Route, gate: WriteGate, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterator[bytes]:
        """Answer one request (``functools.partial(serve, route, gate)`` is the WSGI app).

        Every chunk, and every write of a page that writes (archives), first waits for the
        client to read (``gate``), so a slow reader holds a web thread, never memory.
        """

        def gated_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], Any]:
            write = start_response(status, headers, exc_info)

            def gated_write(data: bytes) -> Any:
                gate.wait()
                return write(data)

            return gated_write

        pacer = self.wire_first
        if pacer is not None:
            pacer.begin()
        environ["PATH_INFO"] = _path_info(route.segments)
        environ["SCRIPT_NAME"] = ""
        environ.pop("REPO_NAME", None)
        environ.pop("REMOTE_USER", None)
        if route.user is not None:
            environ["REMOTE_USER"] = _wsgi_str(route.user.encode("utf-8"))
        if route.served is None:
            body = self._index(route, environ, gated_start_response)
        else:
            if route.served.name:
                environ["REPO_NAME"] = _wsgi_str(route.served.name.encode("utf-8"))
            body = self._hgweb(route.served)(environ, gated_start_response)
        try:
            for chunk in body:
                if pacer is not None:
                    pacer.step()
                gate.wait()
                yield chunk
        except ClientGone:
            return
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
            if pacer is not None:
                pacer.end()

    # -- the index --------------------------------------------------------------------------

    def _index(
        self, route: Route, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        ui = self.ui_factory()
        self._configure(ui)
        app = _Index(self.readable(route.user), ui)
        result: Iterable[bytes] = app(environ, start_response)
        return result

    def readable(self, user: str | None) -> list[tuple[bytes, bytes]]:
        """(name, path) of every served repository ``user`` may read, sorted by name."""
        access = self.access()  # one policy for the whole list, even across a reload
        entries = []
        for name in sorted(self.registry.names()):
            if not name or not access.authorize(user, name).read:
                continue
            try:
                served = self.registry.resolve(name)
            except UnknownRepository:  # gone since the scan
                continue
            entries.append((name.encode("utf-8"), os.fsencode(served.path)))
        return entries


def _store_path(path: bytes) -> bytes:
    store = os.path.join(path, b".hg", b"store")
    return store if os.path.isdir(store) else os.path.join(path, b".hg")


def index_rows(
    ui: Any, repos: Sequence[tuple[bytes, bytes]], req: Any, subdir: bytes = b""
) -> Iterator[dict[bytes, Any]]:
    """hgwebdir's index rows (``rawindexentries``) for ``repos``, without opening them.

    Each repository's ``.hg/hgrc`` supplies its name, description, contact, labels and
    ``web.hidden`` (a row it leaves out; its pages stay reachable); the last change is
    the changelog's mtime, as in hgwebdir. Who may see a row was decided before (the
    caller's readable repositories): ``ui`` carries the overrides of ``_web_config``,
    which reading the hgrc keeps, so hgwebdir's ``allow_read``/``deny_read`` never hide
    one.
    """
    for name, path in repos:
        if not name.startswith(subdir):
            continue
        name = name[len(subdir) :]
        u = ui.copy()
        hgrc = os.path.join(path, b".hg", b"hgrc")
        if rcutil.use_repo_hgrc() and os.path.exists(hgrc):
            try:
                u.readconfig(hgrc)
            except Exception:  # a broken hgrc hides the row, as in hgwebdir
                continue

        def get(section: bytes, item: bytes, default: Any = None, u: Any = u) -> Any:
            return u.config(section, item, default, untrusted=True)

        if u.configbool(b"web", b"hidden", untrusted=True):
            continue
        try:
            lastchange = (get_mtime(_store_path(path)), dateutil.makedate()[1])
        except OSError:
            continue
        parts = [req.apppath.strip(b"/"), subdir.strip(b"/"), name.strip(b"/")]
        url = b"/" + b"/".join(p for p in parts if p) + b"/"
        contact = get_contact(get) or b""
        description = get(b"web", b"description") or b""
        shown = get(b"web", b"name") or name
        labels = u.configlist(b"web", b"labels", untrusted=True)
        yield {
            b"contact": contact or b"unknown",
            b"contact_sort": contact.upper() or b"unknown",
            b"name": shown,
            b"name_sort": shown,
            b"url": url,
            b"description": description or b"unknown",
            b"description_sort": description.upper() or b"unknown",
            b"lastchange": lastchange,
            b"lastchange_sort": lastchange[1] - lastchange[0],
            b"archives": webutil.archivelist(u, b"tip", url),
            b"isdirectory": None,
            b"labels": templateutil.hybridlist(labels, name=b"label"),
        }


def _index_entries(
    context: Any,
    ui: Any,
    repos: Sequence[tuple[bytes, bytes]],
    req: Any,
    stripecount: int,
    sortcolumn: bytes,
    descending: bool,
    subdir: bytes,
) -> Iterator[dict[bytes, Any]]:
    rows: Iterable[dict[bytes, Any]] = index_rows(ui, repos, req, subdir)
    if sortcolumn:
        rows = sorted(rows, key=lambda r: r[b"%s_sort" % sortcolumn], reverse=descending)
    for row, parity in zip(rows, paritygen(stripecount), strict=False):
        row[b"parity"] = parity
        yield row


class _Index(hgwebdir_mod.hgwebdir):  # type: ignore[misc]
    """hgwebdir over a fixed list of (name, path): the caller's readable repositories.

    ``refresh`` never reads a ``[paths]`` file, and ``makeindex`` builds rows with
    ``index_rows``; the templates, sorting, nested indexes and static files are hgwebdir's.
    """

    def __init__(self, repos: list[tuple[bytes, bytes]], ui: Any) -> None:
        self._fixed = repos
        super().__init__(conf=repos, baseui=ui)

    def refresh(self) -> None:
        if self.ui is not None:
            return
        u = self.baseui.copy()
        self.repos = list(self._fixed)
        self.ui = u
        self.gc_full_collect_rate = u.configint(
            b"experimental", b"web.full-garbage-collection-rate"
        )
        self.gc_full_collections_done = 0
        self.style = u.config(b"web", b"style")
        self.templatepath = u.config(b"web", b"templates", untrusted=False)
        self.stripecount = int(u.config(b"web", b"stripes") or 1)
        self.prefix = b""
        self.lastrefresh = 0

    def makeindex(self, req: Any, res: Any, tmpl: Any, subdir: bytes = b"") -> Any:
        sortable = [b"name", b"description", b"contact", b"lastchange"]
        sortcolumn, descending = b"", False
        if b"sort" in req.qsparams:
            sortcolumn = req.qsparams[b"sort"]
            descending = sortcolumn.startswith(b"-")
            if descending:
                sortcolumn = sortcolumn[1:]
            if sortcolumn not in sortable:
                sortcolumn = b""
        sort = [
            (
                b"sort_%s" % column,
                b"%s%s" % (b"-" if (not descending and column == sortcolumn) else b"", column),
            )
            for column in sortable
        ]
        entries = templateutil.mappinggenerator(
            _index_entries,
            args=(self.ui, self.repos, req, self.stripecount, sortcolumn, descending, subdir),
        )
        mapping = {
            b"entries": entries,
            b"subdir": subdir,
            b"pathdef": hgweb_mod.makebreadcrumb(b"/" + subdir, self.prefix),
            b"sortcolumn": sortcolumn,
            b"descending": descending,
        }
        mapping.update(sort)
        res.setbodygen(tmpl.generate(b"index", mapping))
        return res.sendresponse()

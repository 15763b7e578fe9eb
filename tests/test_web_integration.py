"""hgweb on the wire-protocol port, over real HTTP, against the real server.

One server (``--repos-dir`` plus a ``--repo``, an access file with a private repository)
serves the pages; every expectation comes from the real ``hg`` on the same repository
(``hg log``, ``hg cat``), and the metrics are read back with prometheus_client's own
parser. Two more servers check ``--web none`` and the options (root repository,
``--web-archives``, ``--web-style``, ``--metrics ENDPOINT``).
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hgwire_tw.access import hash_password
from tests import repobuilders as rb
from tests.servers import RunningServer, running_server

pytestmark = pytest.mark.timeout(180)

SECRET_WORD = "CLASSIFIED-7f3e9c"
ATOM = "{http://www.w3.org/2005/Atom}"


# --------------------------------------------------------------------------- helpers


def get(
    url: str, *, user: str | None = None, password: str = "", method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request; (status, headers, body) whatever the status."""
    headers = {}
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def text(body: bytes) -> str:
    return html.unescape(body.decode("utf-8"))


def served_log(repo: Path, template: str) -> list[str]:
    """``hg log`` of what the server serves (no secret changesets), newest first."""
    out = rb.hg_out("log", "-r", "reverse(not secret())", "-T", template + "\n", cwd=repo)
    return out.splitlines()


def samples(server: RunningServer, port: int | None = None) -> dict[tuple[str, frozenset], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client: {(name, labels): value}."""
    url = f"http://127.0.0.1:{port}/metrics" if port else server.http_url + "/metrics"
    status, headers, body = get(url)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def hgwire(*args: str) -> None:
    """Run hgwire_tw's own client (``hgwire clone``/``pull``)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "hgwire_tw", *args],
        capture_output=True,
        env=rb.hg_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, rich_repo_template: Path
) -> Iterator[tuple[RunningServer, Path]]:
    """repos/rich, repos/team/proj (with a description), repos/hidden (web.hidden),
    repos/private/vault (alice only), --repo solo=...; users alice (may push) and bob;
    raw TCP too, for a v2 clone."""
    base = tmp_path_factory.mktemp("web")
    repos = base / "repos"
    shutil.copytree(rich_repo_template, repos / "rich", symlinks=True)
    proj = rb.make_linear_repo(repos / "team" / "proj", commits=3)
    (proj / ".hg" / "hgrc").write_text(
        "[web]\ndescription = The team project\ncontact = Team Lead <lead@example.com>\n"
    )
    hidden = rb.make_linear_repo(repos / "hidden", commits=1)
    (hidden / ".hg" / "hgrc").write_text("[web]\nhidden = true\n")
    vault = rb.make_linear_repo(repos / "private" / "vault", commits=2)
    (vault / "classified.txt").write_text(SECRET_WORD + "\n")
    rb.hg("commit", "-A", "-q", "-m", f"add {SECRET_WORD}", cwd=vault)
    solo = rb.make_linear_repo(base / "solo", commits=2)
    access = base / "access.toml"
    access.write_text(
        f'[users.alice]\npassword = "{hash_password("secret")}"\n'
        f'[users.bob]\npassword = "{hash_password("hunter2")}"\n'
        '[[rules]]\nrepos = "private/*"\nread = ["alice"]\n'
        '[[rules]]\nrepos = "*"\nread = ["anonymous", "*"]\nwrite = ["alice"]\n',
        encoding="utf-8",
    )
    with running_server(
        base,
        "--repos-dir", str(repos), "--repo", f"solo={solo}", "--access", str(access),
        "--tcp", "tcp:0:interface=127.0.0.1", "--allow-push-over-http",
        # the refusal tests try a wrong password on every route from one address
        "--http-login-failures", "1000",
    ) as server:  # fmt: skip
        yield server, repos


# --------------------------------------------------------------------------- the index


def test_index_lists_exactly_the_readable_repositories(site: tuple[RunningServer, Path]) -> None:
    """/ lists the registry's repositories the caller may read: the private one only for
    alice, never for anonymous or bob; nothing from an hgweb [paths] config."""
    server, _ = site
    status, headers, body = get(server.http_url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = text(body)
    for name in ("rich", "team/proj", "solo"):
        assert f'href="/{name}/"' in page
    assert "private" not in page and "vault" not in page
    # descriptions and contacts from each repository's hgrc; web.hidden keeps it out
    assert "The team project" in page and "Team Lead" in page
    assert 'href="/hidden/"' not in page and get(server.url("hidden") + "/shortlog")[0] == 200
    assert "private/vault" not in text(
        get(server.http_url + "/", user="bob", password="hunter2")[2]
    )
    status, _, body = get(server.http_url + "/", user="alice", password="secret")
    assert status == 200 and 'href="/private/vault/"' in text(body)
    # a nested index: /team/ lists team/proj only
    status, _, body = get(server.http_url + "/team/")
    assert status == 200 and 'href="/team/proj/"' in text(body) and "/rich/" not in text(body)
    status, _, _ = get(server.http_url + "/private/")
    # anonymous: a directory holding nothing readable answers like a missing repository
    assert status == 401
    # static files of the index
    status, headers, body = get(server.http_url + "/static/style-paper.css")
    assert status == 200 and headers["Content-Type"] == "text/css" and b"body" in body


# --------------------------------------------------------------------------- pages


def test_pages_of_a_real_repository(site: tuple[RunningServer, Path]) -> None:
    """shortlog, rev, file, raw-file, graph and atom-log show what hg itself reports (the
    served view: the secret changeset never appears)."""
    server, repos = site
    rich = repos / "rich"
    url = server.url("rich")
    nodes = served_log(rich, "{node}")
    descs = served_log(rich, "{desc}")
    (secret_node,) = rb.log_nodes(rich, "secret()")
    status, _, body = get(url + "/shortlog")
    page = text(body)
    assert status == 200 and "<title>rich: log</title>" in page
    for node, desc in zip(nodes, descs, strict=True):
        assert node[:12] in page and desc in page
    assert secret_node[:12] not in page and "secret work" not in page

    merge = rb.hg_out("log", "-r", "max(merge())", "-T", "{node}", cwd=rich)
    status, _, body = get(f"{url}/rev/{merge}")
    page = text(body)
    assert status == 200 and f"rich: {merge[:12]}" in page and merge in page
    assert "merge left and right" in page
    status, _, _ = get(f"{url}/rev/{secret_node}")
    assert status == 404

    status, _, body = get(f"{url}/file/{merge}/src/main.py")
    assert status == 200 and "print('bye')" in text(body)
    for path in ("src/main.py", "bin.dat"):
        status, _, body = get(f"{url}/raw-file/{merge}/{path}")
        assert status == 200
        assert body == rb.hg("cat", "-r", merge, path, cwd=rich).stdout

    status, _, body = get(url + "/graph")
    page = text(body)
    assert status == 200 and all(n[:12] in page for n in nodes)

    status, headers, body = get(url + "/atom-log")
    assert status == 200 and headers["Content-Type"].startswith("application/atom+xml")
    feed = ET.fromstring(body)
    entries = feed.findall(f"{ATOM}entry")
    assert len(entries) == min(10, len(nodes))
    for entry, node, desc in zip(entries, nodes, descs, strict=False):
        assert entry.findtext(f"{ATOM}title", "").endswith(desc)  # "[branch] desc"
        assert node in entry.findtext(f"{ATOM}id", "")


def test_old_style_query_urls_and_methods(site: tuple[RunningServer, Path]) -> None:
    """?cmd=shortlog is hgweb's; ?cmd=branches (a wire command too) stays wire protocol;
    a POST to a page is refused; archives are off by default."""
    server, _ = site
    status, _, body = get(server.url("rich") + "?cmd=shortlog")
    assert status == 200 and b"<html" in body
    status, headers, body = get(server.url("rich") + "?cmd=branches&nodes=")
    assert status == 200 and headers["Content-Type"] == "application/mercurial-0.1"
    status, headers, _ = get(server.url("rich") + "/shortlog", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    status, _, body = get(server.url("rich") + "/archive/tip.tar.gz")
    assert status == 403 and b"archives are disabled" in body
    status, _, body = get(server.url("rich") + "/archive/tip.zip")
    assert status == 403


PRIVATE_ROUTES = (
    "",
    "/",
    "/shortlog",
    "/log",
    "/rev/tip",
    "/file/tip/classified.txt",
    "/raw-file/tip/classified.txt",
    "/raw-rev/tip",
    "/graph",
    "/atom-log",
    "/rss-log",
    "/tags",
    "/archive/tip.tar.gz",
    "/static/style-paper.css",
    "?cmd=changeset&node=tip",
    "?cmd=file&node=tip&file=classified.txt",
)


def test_private_repository_refused_on_every_route(site: tuple[RunningServer, Path]) -> None:
    """Anonymous: 401 with a Basic challenge on every hgweb route of the private
    repository, nothing of it in the body; bob (may not read): 404, as for a repository that
    does not exist; alice: the pages."""
    server, _ = site
    url = server.url("private/vault")
    for route in PRIVATE_ROUTES:
        status, headers, body = get(url + route)
        assert status == 401, route
        assert headers["WWW-Authenticate"].startswith("Basic realm="), route
        assert SECRET_WORD.encode() not in body and b"vault" not in body, route
        status, _, body = get(url + route, user="bob", password="hunter2")
        assert status == 404 and SECRET_WORD.encode() not in body, route
        missing = get(server.url("nothing/here") + route, user="bob", password="hunter2")[2]
        assert body.replace(b"private/vault", b"nothing/here") == missing, route
        status, _, _ = get(url + route, user="alice", password="wrong")
        assert status == 401, route
    status, _, body = get(url + "/raw-file/tip/classified.txt", user="alice", password="secret")
    assert status == 200 and body == (SECRET_WORD + "\n").encode()
    status, _, body = get(url + "/shortlog", user="alice", password="secret")
    assert status == 200 and f"add {SECRET_WORD}" in text(body)


def test_clones_on_the_same_url_are_counted(
    site: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    """hg clone of the page URL works; /metrics (parsed by prometheus_client) counts
    clones (v1 and v2 over HTTP, v2 over raw TCP), a push and a pull as such."""
    server, repos = site
    proj = repos / "team" / "proj"
    url = server.url("team/proj")
    before = samples(server)
    rb.hg("clone", "-q", url, tmp_path / "c1")
    assert rb.log_nodes(tmp_path / "c1") == rb.log_nodes(proj)
    tcp = server.ports["tcp"][0]
    hgwire("clone", f"hgwire://127.0.0.1:{tcp}/team/proj", str(tmp_path / "c2"))
    assert rb.log_nodes(tmp_path / "c2") == rb.log_nodes(proj)
    v2 = ("--config", "experimental.httppeer.advertise-v2=true")
    rb.hg(*v2, "clone", "-q", "-U", url, tmp_path / "c3", exe=rb.HG_603)
    assert rb.log_nodes(tmp_path / "c3") == rb.log_nodes(proj)
    (tmp_path / "c1" / "more").write_text("more\n")
    rb.hg("commit", "-A", "-q", "-m", "more", cwd=tmp_path / "c1")
    alice = url.replace("http://", "http://alice:secret@")
    rb.hg("push", "-q", "-R", tmp_path / "c1", alice)
    rb.hg("pull", "-q", "-R", tmp_path / "c2", url)
    assert rb.log_nodes(tmp_path / "c2") == rb.log_nodes(proj)
    after = samples(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hgwire_clones_total", repo="team/proj", transport="http") == 2
    assert delta("hgwire_clones_total", repo="team/proj", transport="tcp") == 1
    assert delta("hgwire_pulls_total", repo="team/proj", transport="http") == 1
    assert delta("hgwire_pulls_total", repo="team/proj", transport="tcp") == 0
    assert delta("hgwire_pushes_total", repo="team/proj", transport="http") == 1
    assert delta("hgwire_bytes_sent_total", transport="tcp") > 0
    assert delta("hgwire_bytes_sent_total", transport="http") > 0
    assert delta("hgwire_connections_total", transport="tcp") >= 1
    assert (
        delta(
            "hgwire_request_duration_seconds_count",
            transport="http",
            protocol="v1",
            command="getbundle",
        )
        == 2
    )
    assert delta("hgwire_request_duration_seconds_count", transport="tcp", protocol="v2",
                 command="changesetdata") == 1  # fmt: skip
    assert value(after, "hgwire_active_connections", transport="http") >= 1  # this scrape
    assert ("hgwire_threadpool_queue_depth", frozenset({("pool", "web")})) in after
    assert value(after, "hgwire_cache_misses_total") >= 1
    assert delta("hgwire_web_request_duration_seconds_count", page="shortlog") == 0


# --------------------------------------------------------------------------- options


def test_web_none_keeps_the_wire_protocol_only(rich_repo: Path, tmp_path: Path) -> None:
    """--web none: no pages, no index; clones still work."""
    with running_server(tmp_path, "--repo", f"rich={rich_repo}", "--web", "none") as server:
        status, headers, body = get(server.url("rich") + "/shortlog")
        assert status == 404 and headers["Content-Type"].startswith("text/plain")
        assert get(server.http_url + "/")[0] == 404
        status, _, body = get(server.url("rich"))
        assert status == 200 and b"<html" not in body
        rb.hg("clone", "-q", "-U", server.url("rich"), tmp_path / "c")
        assert get(server.http_url + "/metrics")[0] == 200


def test_root_repository_archives_style_and_metrics_endpoint(
    rich_repo: Path, tmp_path: Path
) -> None:
    """A bare --repo is served at /; --web-archives gives a tar.gz equal to hg archive;
    --web-style gitweb; --metrics ENDPOINT moves /metrics to its own listener."""
    with running_server(
        tmp_path, "--repo", str(rich_repo), "--web-archives", "--web-style", "gitweb",
        "--metrics", "tcp:0:interface=127.0.0.1",
    ) as server:  # fmt: skip
        status, _, body = get(server.http_url + "/")
        assert status == 200 and b"gitweb" in body.lower() and b"summary" in body
        node = rb.hg_out("log", "-r", "max(not secret())", "-T", "{node}", cwd=rich_repo)
        status, headers, body = get(f"{server.http_url}/archive/{node}.tar.gz")
        assert status == 200 and headers["Content-Type"] == "application/x-gzip"
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
            archived = {
                m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile() and not m.name.endswith(".hg_archival.txt")
            }
        files = rb.hg_out("files", "-r", node, cwd=rich_repo).split()
        assert sorted(archived) == sorted(files)
        for path in files:
            assert archived[path] == rb.hg("cat", "-r", node, path, cwd=rich_repo).stdout
        status, _, body = get(server.http_url + "/metrics")
        assert b"hgwire_clones_total" not in body
        (port,) = server.ports["metrics"]
        found = samples(server, port)
        assert value(found, "hgwire_web_request_duration_seconds_count", page="archive") == 1


def test_https_pages_and_push_through_the_counting_listener(tmp_path: Path) -> None:
    """Over TLS the listener's byte counter sits inside TLS and the request still knows it
    is secure: hgweb's feed links are https, a push needs no --allow-push-over-http."""
    import ssl
    import subprocess

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
         "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    src = rb.make_linear_repo(tmp_path / "src", commits=2)
    access = tmp_path / "access.toml"
    access.write_text(
        f'[users.alice]\npassword = "{hash_password("secret")}"\n'
        '[[rules]]\nrepos = "*"\nread = ["anonymous"]\nwrite = ["alice"]\n',
        encoding="utf-8",
    )
    endpoint = (
        f"ssl:0:interface=127.0.0.1:privateKey={tmp_path / 'key.pem'}"
        f":certKey={tmp_path / 'cert.pem'}"
    )
    with running_server(tmp_path, "--repo", f"src={src}", "--access", str(access),
                        http=endpoint) as server:  # fmt: skip
        url = f"https://127.0.0.1:{server.http_port}/src"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(url + "/atom-log", timeout=60, context=context) as resp:
            feed = ET.fromstring(resp.read())
        links = [link.get("href", "") for link in feed.iter(f"{ATOM}link")]
        assert links and all(
            link.startswith(f"https://127.0.0.1:{server.http_port}/") for link in links
        )
        rb.hg("clone", "-q", "--insecure", url, tmp_path / "c")
        (tmp_path / "c" / "new").write_text("new\n")
        rb.hg("commit", "-A", "-q", "-m", "over tls", cwd=tmp_path / "c")
        alice = url.replace("https://", "https://alice:secret@")
        rb.hg("push", "-q", "--insecure", "-R", tmp_path / "c", alice)
        assert rb.log_nodes(src) == rb.log_nodes(tmp_path / "c")


# --------------------------------------------------------------------------- threads, hgrc

#: A Mercurial extension for the served repository: an hgweb permission hook (the
#: extension point hgweb calls for every non-static page) that records the thread
#: running it and lets the page go on.
THREAD_RECORDER = """
import threading

from mercurial.hgweb import common


def record(hgweb, req, op):
    path = hgweb.repo.ui.config(b"threadrecorder", b"file")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(threading.current_thread().name + "\\n")


def extsetup(ui):
    if record not in common.permhooks:
        common.permhooks.append(record)
"""


def test_hgweb_runs_on_web_threads_and_the_repository_hgrc_decides_nothing(
    tmp_path: Path,
) -> None:
    """Pages run on the web pool's threads (not the reactor's, not the repository
    workers'); the repository's own [web] allow_read/deny_read, allow_push, push_ssl
    neither hide a readable repository nor open a push: the access file decides, and a
    POST never reaches hgweb."""
    repo = rb.make_linear_repo(tmp_path / "r", commits=2)
    (tmp_path / "recorder.py").write_text(THREAD_RECORDER, encoding="utf-8")
    threads = tmp_path / "threads.txt"
    (repo / ".hg" / "hgrc").write_text(
        f"[extensions]\nrecorder = {tmp_path / 'recorder.py'}\n"
        f"[threadrecorder]\nfile = {threads}\n"
        "[web]\nallow_read = nobody\ndeny_read = *\n"
        "allow_push = *\nallow-push = *\npush_ssl = false\ndeny_push =\n",
        encoding="utf-8",
    )
    access = tmp_path / "access.toml"
    access.write_text(
        f'[users.alice]\npassword = "{hash_password("secret")}"\n'
        '[[rules]]\nrepos = "*"\nread = ["anonymous", "*"]\nwrite = ["alice"]\n',
        encoding="utf-8",
    )
    with running_server(tmp_path, "--repo", f"r={repo}", "--access", str(access)) as server:
        for route in ("/shortlog", "/graph", "/file/tip/a.txt"):
            status, _, body = get(server.url("r") + route)
            assert status == 200 and b"read not authorized" not in body, route
        assert get(server.url("r") + "/shortlog", user="alice", password="secret")[0] == 200
        assert 'href="/r/"' in text(get(server.http_url + "/")[2])
        # hgweb would take a push here (allow_push = *, push_ssl = false); it never sees it
        assert get(server.url("r") + "/", method="POST")[0] == 405
        # the v1 path: anonymous may not push (access file), alice needs TLS (no
        # --allow-push-over-http), whatever the hgrc allows
        rb.hg("clone", "-q", server.url("r"), tmp_path / "w")
        (tmp_path / "w" / "new.txt").write_text("new\n")
        rb.hg("commit", "-A", "-q", "-m", "new", cwd=tmp_path / "w")
        anonymous = rb.hg("push", "-R", tmp_path / "w", server.url("r"), check=False)
        assert anonymous.returncode != 0
        alice = server.url("r").replace("http://", "http://alice:secret@")
        plain = rb.hg("push", "-R", tmp_path / "w", alice, check=False)
        assert plain.returncode != 0 and b"ssl required" in plain.stderr + plain.stdout
        log = server.log()
    assert len(rb.log_nodes(repo)) == 2  # nothing was pushed
    assert "push to r refused for anonymous over HTTP" in log
    names = threads.read_text(encoding="utf-8").split()
    assert len(names) == 4, names  # one per page (static files need no permission)
    assert all(n.startswith("PoolThread-hgwire-web-") for n in names), names

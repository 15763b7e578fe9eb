"""Service options and the twistd plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.python import usage

from hgwire_tw.tap import DEFAULT_HTTP, Options
from tests.repobuilders import hg_env, init_repo


def parse(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_defaults_bind_localhost_only(tmp_path: Path) -> None:
    """Without options, HTTP, SSH and raw TCP listen on 127.0.0.1 only."""
    init_repo(tmp_path / "r")
    opts = parse("--repo", f"r={tmp_path / 'r'}")
    assert opts["http"] == [DEFAULT_HTTP] and "interface=127.0.0.1" in DEFAULT_HTTP
    for name in ("ssh", "tcp"):
        assert len(opts[name]) == 1 and opts[name][0].endswith("interface=127.0.0.1")
    assert opts["repos"] == {"r": str(tmp_path / "r")}


def test_repeatable_and_none(tmp_path: Path) -> None:
    """--repo and --http repeat; 'none' disables a transport."""
    init_repo(tmp_path / "a")
    init_repo(tmp_path / "b")
    opts = parse(
        "--repo", f"a={tmp_path / 'a'}", "--repo", f"x/b={tmp_path / 'b'}", "--http", "none"
    )
    assert set(opts["repos"]) == {"a", "x/b"} and opts["http"] == []


def test_config_file_and_command_line_override(tmp_path: Path) -> None:
    """TOML settings apply unless the command line says otherwise."""
    init_repo(tmp_path / "a")
    cfg = tmp_path / "hgwire.toml"
    cfg.write_text(
        f'repos = {{ a = "{tmp_path / "a"}" }}\nhttp = ["tcp:9999:interface=127.0.0.1"]\n'
        f'workers = 7\ncompression = "zlib,zstd"\nallow_push_over_http = true\n'
    )
    opts = parse("--config", str(cfg), "--workers", "3")
    s = opts.settings()
    assert opts["http"] == ["tcp:9999:interface=127.0.0.1"]
    assert s.workers == 3 and s.v1_compression == ("zlib", "zstd") and s.allow_push_over_http


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--repo", "x=/nonexistent"], "not a Mercurial repository"),
        (["--compression", "brotli"], "unknown engine"),
        (["--repos-dir", "/nonexistent"], "not a directory"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: list[str], fragment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mistakes are reported as usage errors naming the option."""
    monkeypatch.chdir(init_repo(tmp_path / "cwd"))
    with pytest.raises(usage.UsageError, match=fragment):
        parse(*argv)


def test_unknown_config_setting(tmp_path: Path) -> None:
    """A misspelt setting in the config file is an error, not ignored."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("htp = 'tcp:1'\n")
    with pytest.raises(usage.UsageError, match="htp"):
        parse("--config", str(cfg))


def test_twistd_finds_the_plugin() -> None:
    """`twistd hgwire` is discoverable through Twisted's plugin system."""
    code = (
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "print([p.tapname for p in getPlugins(IServiceMaker)])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=hg_env(), check=True
    ).stdout
    assert "'hgwire'" in out


def test_hgwire_passwd_stdin() -> None:
    """`hgwire passwd --stdin` prints a hash that verifies."""
    from hgwire_tw.access import check_password

    proc = subprocess.run(
        [sys.executable, "-m", "hgwire_tw", "passwd", "--stdin"],
        input="hunter2\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert check_password("hunter2", proc.stdout.strip())


def test_blob_store_lives_in_state_dir_with_optional_base_url(tmp_path: Path) -> None:
    """The blob store is STATE_DIR/blobs; --blob-base-url points URLs at a CDN."""
    from twisted.internet.testing import MemoryReactor

    from hgwire_tw.tap import Options, makeService

    repo = tmp_path / "r"
    (repo / ".hg").mkdir(parents=True)
    options = Options()
    options.parseOptions(
        [
            "--repo",
            f"r={repo}",
            "--state-dir",
            str(tmp_path / "state"),
            "--blob-base-url",
            "https://cdn.example/blobs",
        ]
    )
    service = makeService(options, reactor=MemoryReactor())
    blobs = service.context.blobs
    assert blobs is not None
    assert blobs.directory == (tmp_path / "state" / "blobs").resolve()
    assert blobs.url("ab" * 32 + ".hg") == "https://cdn.example/blobs/" + "ab" * 32 + ".hg"


def test_tcp_limits_from_options_and_toml(tmp_path: Path) -> None:
    """--tcp-* options and their TOML keys set TCPLimits; the command line wins."""
    from hgwire_tw.transports.tcp import TCPLimits

    init_repo(tmp_path / "a")
    cfg = tmp_path / "hgwire.toml"
    cfg.write_text("tcp_streams = 4\ntcp_idle_timeout = 30\ntcp_max_per_address = 2\n")
    opts = parse("--repo", str(tmp_path / "a"), "--config", str(cfg), "--tcp-streams", "3")
    limits = opts.settings().tcp_limits
    assert limits == TCPLimits(streams=3, idle_timeout=30.0, max_per_address=2)
    assert parse("--repo", str(tmp_path / "a")).settings().tcp_limits == TCPLimits()
    for bad in (("--tcp-streams", "0"), ("--tcp-streams", "65"), ("--tcp-idle-timeout", "-1")):
        with pytest.raises(usage.UsageError):
            parse("--repo", str(tmp_path / "a"), *bad)


def test_tcp_factory_uses_the_configured_limits(tmp_path: Path) -> None:
    """makeService builds the TCP factory with the limits the options describe."""
    from twisted.internet.task import Clock

    from hgwire_tw.tap import makeService
    from hgwire_tw.transports.tcp import HgwireTCPFactory

    init_repo(tmp_path / "a")
    opts = parse(
        "--repo", str(tmp_path / "a"), "--http", "none", "--ssh", "none",
        "--tcp", "tcp:0:interface=127.0.0.1", "--tcp-max-in-flight", "3",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    top = makeService(opts, reactor=Clock())
    (factory,) = [s.factory for s in top.listeners]
    assert isinstance(factory, HgwireTCPFactory) and factory.limits.max_in_flight == 3


def test_cache_and_redirect_options(tmp_path: Path) -> None:
    """--cache/--cache-size/--redirects and [[redirect.targets]] build the runner's cache
    and redirector; redirects without a cache are refused."""
    from twisted.internet.testing import MemoryReactor

    from hgwire_tw.cache import DiskStore, MemoryStore
    from hgwire_tw.tap import makeService

    init_repo(tmp_path / "r")
    repo = f"r={tmp_path / 'r'}"
    state = ["--state-dir", str(tmp_path / "state")]
    default = makeService(parse("--repo", repo, *state), reactor=MemoryReactor())
    assert isinstance(default.context.cache, MemoryStore)
    assert default.context.runner.redirector is None
    config = tmp_path / "c.toml"
    config.write_text(
        'cache = "disk"\ncache_size = 1000000\nredirects = true\n'
        '[[redirect.targets]]\nname = "cdn"\nprotocol = "https"\n'
        'uris = ["https://cdn.example/hg/"]\n',
        encoding="utf-8",
    )
    svc = makeService(parse("--repo", repo, *state, "--config", str(config)), MemoryReactor())
    cache = svc.context.cache
    assert isinstance(cache, DiskStore) and cache.max_bytes == 1000000
    assert cache.directory == (tmp_path / "state" / "cache").resolve()
    names = [t.name for t in svc.context.runner.redirector.targets()]
    assert names == ["cdn"]  # hgwire joins once the HTTP listener is bound
    svc.context.embedded_blob_base = "http://127.0.0.1:1/.hgwire/blobs/"
    assert [t.name for t in svc.context.runner.redirector.targets()] == ["hgwire", "cdn"]
    none = makeService(parse("--repo", repo, *state, "--cache", "none"), MemoryReactor())
    assert none.context.cache is None
    with pytest.raises(usage.UsageError):
        parse("--repo", repo, "--cache", "none", "--redirects")
    with pytest.raises(usage.UsageError):
        parse("--repo", repo, "--cache", "redis")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[redirect.targets]]\nname = "x"\nprotocol = "ftp"\nuris = ["ftp://x/"]\n')
    with pytest.raises(usage.UsageError):
        parse("--repo", repo, "--config", str(bad))


def test_blob_retention_option_toml_and_service(tmp_path: Path) -> None:
    """--blob-retention (or TOML blob_retention) sets the sweeper's retention, a week by
    default; 0 turns the sweep off; negative or non-numbers are refused."""
    from twisted.internet.testing import MemoryReactor

    from hgwire_tw.blobsweep import DEFAULT_RETENTION, BlobSweeper
    from hgwire_tw.tap import makeService

    init_repo(tmp_path / "r")
    base = ["--repo", f"r={tmp_path / 'r'}", "--state-dir", str(tmp_path / "state")]

    def sweepers(*argv: str) -> list[BlobSweeper]:
        service = makeService(parse(*base, *argv), reactor=MemoryReactor())
        return [s for s in service if isinstance(s, BlobSweeper)]

    (default,) = sweepers()
    assert default.retention == DEFAULT_RETENTION == 7 * 24 * 3600
    assert default.blobs.directory == (tmp_path / "state" / "blobs").resolve()
    (short,) = sweepers("--blob-retention", "120")
    assert short.retention == 120 and short.every == 30
    assert sweepers("--blob-retention", "0") == []
    config = tmp_path / "hgwire.toml"
    config.write_text("blob_retention = 600\n", encoding="utf-8")
    (from_toml,) = sweepers("--config", str(config))
    assert from_toml.retention == 600
    (cli_wins,) = sweepers("--config", str(config), "--blob-retention", "60")
    assert cli_wins.retention == 60
    for bad in ("-1", "soon"):
        with pytest.raises(usage.UsageError):
            parse(*base, "--blob-retention", bad)
    config.write_text('blob_retention = "a week"\n', encoding="utf-8")
    with pytest.raises(usage.UsageError, match="blob-retention"):
        parse(*base, "--config", str(config))


class _SyncPool:
    """A thread pool that runs each job at once, on the calling thread."""

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except Exception:
            from twisted.python.failure import Failure

            on_result(False, Failure())
        else:
            on_result(True, result)


def test_reload_hooks_run_after_a_reload_that_succeeded(tmp_path: Path) -> None:
    """ServerContext.on_reload: after SIGHUP's reload the hooks see the new policy in
    ctx.access, in the order they were added; one that raises is logged and the next
    still runs; a reload that fails (broken access file) calls none."""
    from twisted.internet.testing import MemoryReactor
    from twisted.logger import capturedLogs

    from hgwire_tw.tap import makeService

    class Reactor(MemoryReactor):
        pool = _SyncPool()

        def getThreadPool(self) -> _SyncPool:
            return self.pool

        def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
            f(*args, **kw)

    init_repo(tmp_path / "r")
    access = tmp_path / "access.toml"
    access.write_text('[[rules]]\nrepos = "*"\nread = ["anonymous"]\n', encoding="utf-8")
    opts = parse(
        "--repo", f"r={tmp_path / 'r'}", "--access", str(access), "--http", "none",
        "--ssh", "none", "--tcp", "none", "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    top = makeService(opts, reactor=Reactor())
    ctx = top.context
    assert ctx.access.authorize(None, "r").read
    seen: list[tuple[str, bool]] = []

    def broken(c: Any) -> None:
        seen.append(("broken", c.access.authorize(None, "r").read))
        raise RuntimeError("hook bug")

    ctx.on_reload(broken)
    ctx.on_reload(lambda c: seen.append(("second", c.access.authorize(None, "r").read)))
    access.write_text('[[rules]]\nrepos = "*"\nread = []\n', encoding="utf-8")
    with capturedLogs() as events:
        top.reload()
    assert seen == [("broken", False), ("second", False)]
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)
    access.write_text("[[rules]\nbroken", encoding="utf-8")
    with capturedLogs() as events:
        top.reload()
    assert len(seen) == 2  # nothing replaced, nobody told
    assert any("reload failed" in e.get("log_format", "") for e in events)


def test_push_jobs_waiting_show_in_the_write_pool_series(tmp_path: Path) -> None:
    """A push job (write=True) waiting for a thread is in
    hgwire_threadpool_queue_depth{pool="write"}, not in the read workers' series."""
    from prometheus_client.parser import text_string_to_metric_families
    from twisted.internet.testing import MemoryReactor

    from hgwire_tw.tap import makeService

    init_repo(tmp_path / "r")
    opts = parse(
        "--repo", f"r={tmp_path / 'r'}", "--http", "none", "--ssh", "none", "--tcp", "none",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    ctx = makeService(opts, reactor=MemoryReactor()).context
    served = ctx.registry.resolve("r")
    # The pool is not started: the jobs wait in its queue.
    ctx.pool.run(served, lambda repo: None, write=True)
    ctx.pool.run(served, lambda repo: None, write=True)
    depth = {
        s.labels["pool"]: s.value
        for family in text_string_to_metric_families(ctx.metrics.exposition().decode())
        for s in family.samples
        if s.name == "hgwire_threadpool_queue_depth"
    }
    assert depth["write"] == 2 and depth["repo"] == 0

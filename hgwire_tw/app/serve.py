"""``hgwire serve``: run the service in the foreground, as a supervisor expects.

The same ``Options`` and ``makeService`` as ``twistd -n hgwire``, run by a small runner of
its own instead of twistd's, so that

- every configuration mistake is one line on stderr naming the option, file or line,
  and the exit status is 2 (no traceback, no help text);
- a listener that cannot bind ends the process at once with status 1 and one line
  naming the endpoint and the OS error;
- SIGTERM and SIGINT stop gracefully (``HgwireService.stopService``: in-flight
  responses get ``--shutdown-grace`` seconds) and the exit status is 0; a second
  signal cuts the remaining connections at once;
- SIGHUP reloads the access file, TLS certificates and ``--repos-dir``;
- log lines go to stdout, line-buffered, from ``--log-level`` up.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

__all__ = ["run", "start_logging"]

log = Logger()

#: Option values of ``--log-level`` -> Twisted log levels.
LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


def start_logging(level: str, stream: IO[str] | None = None) -> None:
    """Send Twisted's log events from ``level`` up to ``stream`` (stdout), one line each."""
    out = stream or sys.stdout
    reconfigure = getattr(out, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)  # journald and pipes see each line at once
    observer = FilteringLogObserver(
        textFileLogObserver(out),
        [_quiet_ports, LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])],  # type: ignore[list-item]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _quiet_ports(event: dict[str, Any]) -> PredicateResult:
    """Twisted's own "Site starting on 8000" and "(TCP Port 8000 Closed)" lines say less
    than the listener lines of ``hgwire_tw.tap``: they become debug lines."""
    text = event.get("log_text") or event.get("log_format") or ""
    if event.get("log_namespace") == "log_legacy" and (
        " starting on " in text or (text.startswith("(") and text.endswith(" Closed)"))
    ):
        event["log_level"] = LogLevel.debug
    return PredicateResult.maybe  # type: ignore[no-any-return]


def _fail(message: str, status: int) -> int:
    print(f"hgwire serve: {message}", file=sys.stderr)
    return status


def run(argv: Sequence[str], reactor: Any = None) -> int:
    """Parse ``argv``, build the service, run it until stopped; the exit status."""
    from hgwire_tw.tap import ListenFailed, Options, describe_error, makeService

    options = Options()
    try:
        options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    except usage.UsageError as e:
        return _fail(str(e), 2)
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    start_logging(options["log-level"])
    try:
        top = makeService(options, reactor=reactor)
    except usage.UsageError as e:
        return _fail(str(e), 2)
    except OSError as e:
        return _fail(describe_error(e), 1)
    try:
        top.privilegedStartService()
    except ListenFailed as e:
        return _fail(str(e), 1)

    def started() -> None:
        _install_stop_signals(reactor, top)
        top.startService()

    reactor.callWhenRunning(started)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run()
    return top.exit_status


def _install_stop_signals(reactor: Any, top: Any) -> None:
    """SIGTERM/SIGINT: stop gracefully; the second one cuts what is left."""
    stopping = [False]

    def stop(name: str) -> None:
        log.info("received {signal}: shutting down", signal=name)
        if reactor.running:
            try:
                reactor.stop()
            except Exception:  # already stopping (a listener failed)
                pass

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stopping[0]:
            reactor.callFromThread(top.cut_now)
            return
        stopping[0] = True
        reactor.callFromThread(stop, name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

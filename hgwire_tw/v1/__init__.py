"""Wire protocol v1 on Mercurial's own command implementations.

A transport decides a ``call.V1Call`` (with the ``protocol.ProtocolFacts`` our
protocol-handler object is made from) and hands it to ``runner.V1Runner`` on a worker
thread (``runner.start_call``); ``cache.CachingV1Runner`` decorates the runner with the
response cache. ``dispatch`` runs Mercurial's command functions, ``guard`` checks their
arguments first, ``results`` are the records a run yields and ``failures`` the answers
and log lines of failed commands. The byte-level codecs live in ``hgwire_tw.core.v1``;
the transports format results.
"""

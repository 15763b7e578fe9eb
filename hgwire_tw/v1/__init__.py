"""Wire protocol v1 on Mercurial's own command implementations.

``protocol.V1Protocol`` is the protocol-handler object Mercurial's v1 commands expect;
``dispatch.run_v1_command`` runs a command on a worker thread and types its result.
The byte-level codecs live in ``hgwire_tw.core.v1``; the transports format results.
"""

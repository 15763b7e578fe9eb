"""The server's face: Mercurial's hgweb pages and the repository index on the HTTP port.

``resource.WebFrontEnd`` (reactor thread: routing, access, the web thread pool) and
``app.HgwebApplication`` (web threads: hgweb and hgwebdir). ``metricspage`` serves
``/metrics``. ``docs/web.md`` describes the behaviour.
"""

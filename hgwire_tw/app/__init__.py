"""The application layer: the settings table the server's options, TOML keys, ``Settings``
and reference documentation are generated from (``hgwire_tw.app.settings``)."""

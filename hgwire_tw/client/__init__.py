"""The hgwire client: wire protocol v2 over HTTP and raw TCP, clone and pull into a real
Mercurial repository. See ``docs/client.md``."""

"""hgwire_tw: a Mercurial repository server on Twisted (HTTP v1/v2, SSH, raw TCP)."""

#: The version of hgwire_tw (setup.py reads it from here).
__version__ = "0.1.0"

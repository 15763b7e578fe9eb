"""Makes ``twistd hgwire`` available once hgwire_tw is installed."""

from twisted.application.service import ServiceMaker

hgwire = ServiceMaker(
    "hgwire",
    "hgwire_tw.tap",
    "Mercurial repository server: HTTP (v1 and v2), SSH and raw TCP.",
    "hgwire",
)

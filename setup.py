"""hgwire_tw: a Mercurial repository server on Twisted."""

import re

from setuptools import find_packages, setup

with open("hgwire_tw/__init__.py", encoding="utf-8") as init:
    VERSION = re.search(r'^__version__ = "([^"]+)"', init.read(), re.M).group(1)

setup(
    name="hgwire_tw",
    version=VERSION,
    description="Mercurial repository server on Twisted: HTTP, SSH and raw TCP, protocol v1 and v2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=[*find_packages(include=["hgwire_tw", "hgwire_tw.*"]), "twisted.plugins"],
    package_data={"twisted": ["plugins/hgwire_plugin.py"]},
    install_requires=[
        "twisted[conch,tls]>=22.4,<27",
        "zstandard>=0.21,<0.26",
        "cbor2>=5.4,<7",
        "service-identity>=21.1",
        "pyopenssl>=23.0",
        "mercurial>=6.5,<7.3",
        "prometheus-client>=0.17,<1",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis>=6.80",
            "pytest-timeout>=2.1",
            # two workers: most integration tests wait on real hg subprocesses
            "pytest-xdist>=3.5",
        ],
        "dev": [
            "ruff>=0.4",
            "mypy>=1.8",
            "mypy-zope>=1.0",
        ],
    },
    entry_points={"console_scripts": ["hgwire = hgwire_tw.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Topic :: Software Development :: Version Control :: Mercurial",
    ],
)

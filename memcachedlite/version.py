"""The release number, defined once: the package metadata, ``mcl --version``
and the ``version`` reply all read it from here."""

__version__ = "0.1.0"

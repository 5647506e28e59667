"""The VOEvent Transport Protocol (VTP, IVOA VOEvent Transport 2.0), once for every role.

* :mod:`~mmcross.vtp.base` — framing, ``Transport`` messages and safe XML parsing.
"""

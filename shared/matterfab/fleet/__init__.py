"""After the line: find any device, revoke DACs, number CRLs, scrap and reissue devices.

Everything here is write-once objects under `fleet/` (keys.py names every one): pointers from
each printed or readable identity to a device (written by the assembler as images become
ready), per-device image and scrap records, revocation records, the CRL number chain and the
"may be certified again" grants. Nothing is a read-modify-write document, so concurrent
operators and services never lose each other's writes.
"""

"""Exit status 0 when FILE exists and its SHA-256 is HEX (used by the fetch scripts).

Usage: python sha256_is.py FILE HEX
"""
import hashlib
import sys

path, expected = sys.argv[1], sys.argv[2]
digest = hashlib.sha256()
try:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
except OSError:
    sys.exit(1)
sys.exit(0 if digest.hexdigest() == expected else 1)

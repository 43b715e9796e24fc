#!/usr/bin/env bash
# Unpack the EuroSAT zip(s) found in ZIP_DIR into EXTRACT_DIR, safely and only once.
#
#   bash scripts/unzip_files.sh [ZIP_DIR [EXTRACT_DIR]]      (or set ZIP_DIR / EXTRACT_DIR / ZIP_PATTERN)
#
# Defaults: ZIP_DIR=data, EXTRACT_DIR=datae, ZIP_PATTERN='EuroSAT*.zip':
#   data/EuroSAT.zip -> datae/EuroSAT/<Class>/*.jpg.
# - Each archive goes to EXTRACT_DIR/<archive name without .zip> (EuroSAT_RGB.zip from zenodo also goes to
#   EuroSAT). A single top folder shared by every entry (`2750/` in EuroSAT.zip, `EuroSAT_RGB/` in zenodo's) is
#   stripped, so the class folders land directly in EXTRACT_DIR/EuroSAT.
# - An archive already unpacked is skipped: EXTRACT_DIR/.extracted_<archive name> is written after a complete
#   extraction (delete it to unpack again). A run killed half-way has no marker and simply unpacks again.
# - Zip-slip: an archive with any entry that would land outside its folder (absolute path, `..`, drive letter)
#   is refused as a whole, before anything of it is written.
# - A corrupt or truncated archive is reported by name and the others are still unpacked; the exit status is
#   non-zero at the end if any archive failed.
# The SSL4EO-S12 `*.zarr.zip` files are NOT archives to unpack: make_dataset.py reads them directly as zips, and
# they never match (they are skipped even if the pattern would match them).
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

ZIP_DIR="${1:-${ZIP_DIR:-data}}"
EXTRACT_DIR="${2:-${EXTRACT_DIR:-datae}}"
ZIP_PATTERN="${ZIP_PATTERN:-EuroSAT*.zip}"

# the project venv if there is one, else the system python (only the standard library is used)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3 || command -v python)"

"$PY" - "$ZIP_DIR" "$EXTRACT_DIR" "$ZIP_PATTERN" <<'EOF'
import fnmatch
import os
import shutil
import sys
import zipfile

zip_dir, extract_dir, pattern = sys.argv[1:4]
if not os.path.isdir(zip_dir):
    sys.exit(f"unzip_files.sh: {zip_dir} does not exist; download the archives first with `bash scripts/data.sh`")
archives = sorted(f for f in os.listdir(zip_dir) if fnmatch.fnmatch(f, pattern) and not f.endswith(".zarr.zip")
                  and os.path.isfile(os.path.join(zip_dir, f)))
if not archives:
    sys.exit(f"unzip_files.sh: no archive matching {pattern!r} in {zip_dir}; download it with `bash scripts/data.sh`")


def target_name(archive):
    stem = archive[: -len(".zip")]
    return "EuroSAT" if stem == "EuroSAT_RGB" else stem  # zenodo's name for the same RGB data


def plan(zf):
    """(member, relative path) for each file, with the common top folder stripped; ValueError on an unsafe entry."""
    names = [i.filename for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise ValueError(f"unsafe entry {name!r} would land outside the target folder (zip-slip); refused")
    tops = {n.replace("\\", "/").split("/")[0] for n in names}
    strip = len(tops) == 1 and all("/" in n.replace("\\", "/") for n in names)
    out = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        if info.is_dir() or name.startswith("__MACOSX/"):
            continue
        rel = name.split("/", 1)[1] if strip else name
        if rel:
            out.append((info, rel))
    return out


os.makedirs(extract_dir, exist_ok=True)
failed = []
for archive in archives:
    src = os.path.join(zip_dir, archive)
    dest = os.path.join(extract_dir, target_name(archive))
    marker = os.path.join(extract_dir, f".extracted_{archive}")
    if os.path.exists(marker):
        print(f"{archive}: already extracted to {dest} (delete {marker} to extract again)")
        continue
    try:
        with zipfile.ZipFile(src) as zf:
            members = plan(zf)
            root = os.path.realpath(dest)
            for info, rel in members:  # a second guard, on the resolved paths
                if not os.path.realpath(os.path.join(dest, rel)).startswith(root + os.sep):
                    raise ValueError(f"unsafe entry {info.filename!r} would land outside {dest} (zip-slip); refused")
            print(f"{archive}: extracting {len(members)} files to {dest}")
            for info, rel in members:
                path = os.path.join(dest, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.part"
                try:
                    with zf.open(info) as fin, open(tmp, "wb") as fout:  # reading to the end checks the CRC
                        shutil.copyfileobj(fin, fout)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):  # a bad CRC or a kill: no half file under the real name
                        os.remove(tmp)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        print(f"FAILED {src}: {type(error).__name__}: {error}. If it is a truncated download, delete it and rerun "
              "`bash scripts/data.sh`.", file=sys.stderr)
        failed.append(archive)
        continue
    with open(marker, "w") as f:
        f.write(f"{src}\n")
    print(f"{archive}: done")
if failed:
    sys.exit(f"unzip_files.sh: {len(failed)} of {len(archives)} archive(s) failed: {', '.join(failed)}")
print(f"unzip_files.sh: {len(archives)} archive(s) extracted or already there under {extract_dir}")
EOF

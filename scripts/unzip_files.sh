#!/usr/bin/env bash
# Unpack the EuroSAT zip(s) found in ZIP_DIR into EXTRACT_DIR, safely and only once.
#
#   bash scripts/unzip_files.sh [ZIP_DIR [EXTRACT_DIR]]      (or set ZIP_DIR / EXTRACT_DIR / ZIP_PATTERN)
#
# Defaults: ZIP_DIR=data, EXTRACT_DIR=datae, ZIP_PATTERN='EuroSAT*.zip':
#   data/EuroSAT.zip -> datae/EuroSAT/<Class>/*.jpg.
# - Each archive goes to EXTRACT_DIR/<archive name without .zip> (EuroSAT_RGB.zip from zenodo also goes to
#   EuroSAT). A single top folder shared by every entry (`2750/` in EuroSAT.zip, `EuroSAT_RGB/` in zenodo's)
#   is stripped, so the class folders land directly in EXTRACT_DIR/EuroSAT.
# - An archive already unpacked is skipped: EXTRACT_DIR/.extracted_<archive name> is written after a complete
#   extraction (delete it to unpack again). A run killed half-way has no marker and simply unpacks again.
# - Refused as a whole, before anything of it is written (the message says why and what to do):
#   - a name that gives no plain folder under EXTRACT_DIR (`.zip`, `...zip`), or a target folder that is a
#     link or a file;
#   - zip-slip: an entry that would land outside its folder (absolute path, `..`, drive letter, or a folder
#     that is a link to elsewhere);
#   - zip bomb: declared uncompressed sizes that add up to more than the free space on EXTRACT_DIR's disk, or
#     to more than 100x the archive's size (EuroSAT's JPEGs barely compress: real archives expand about 1x).
# - Each file is written to a new, uniquely named NAME.<random>.part (created exclusively: never through a
#   link or into an old file) and renamed to NAME once complete. An entry that yields more bytes than it
#   declares is stopped there, its partial file removed.
# - A corrupt, truncated or refused archive is reported by name and the others are still unpacked; the exit
#   status is non-zero at the end if any archive failed. A ZIP_DIR or EXTRACT_DIR that is a file: a message
#   naming it, exit status 1.
# The SSL4EO-S12 `*.zarr.zip` files are NOT archives to unpack: make_dataset.py reads them directly as zips,
# and they never match (they are skipped even if the pattern would match them).
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
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
import contextlib
import copy
import fnmatch
import os
import secrets
import shutil
import sys
import zipfile
import zlib

# Zip bomb guard: EuroSAT's JPEGs barely compress, so a real archive expands to about 1x its size. More than
# 100x overall is no image archive but a bomb (or a wrong file): refused before anything is written.
MAX_RATIO = 100
# Below this many uncompressed bytes the ratio is not checked: a few small text files compress far better
# than 100x, yet cannot fill a disk.
RATIO_CHECK_FROM = 1 << 20
CHUNK = 1 << 20  # bytes copied at a time; each entry's count is checked against its declared size


class Refused(Exception):
    """An archive not to unpack; the message says why and what to do."""


def fail(message):
    sys.exit(f"unzip_files.sh: {message}")


def check_dirs(zip_dir, extract_dir):
    """Exit with a message naming the folder and the fix when ZIP_DIR or EXTRACT_DIR cannot be used."""
    if not os.path.exists(zip_dir):
        fail(f"{zip_dir} does not exist; download the archives first with `bash scripts/data.sh`")
    if not os.path.isdir(zip_dir):
        fail(f"ZIP_DIR {zip_dir} is a file, not a folder; pass the folder that holds the archives "
             "(first argument or ZIP_DIR=...)")
    if os.path.exists(extract_dir) and not os.path.isdir(extract_dir):
        fail(f"EXTRACT_DIR {extract_dir} is a file, not a folder; move it away or pass another folder "
             "(second argument or EXTRACT_DIR=...)")
    try:
        os.makedirs(extract_dir, exist_ok=True)
    except OSError as error:  # a parent that is a file, a dangling link, no permission
        fail(f"cannot create EXTRACT_DIR {extract_dir} ({error.strerror}); pass a folder you can write "
             "(second argument or EXTRACT_DIR=...)")


def find_archives(zip_dir, pattern):
    try:
        names = os.listdir(zip_dir)
    except OSError as error:
        fail(f"cannot read {zip_dir} ({error.strerror}); check its permissions")
    archives = sorted(f for f in names if fnmatch.fnmatch(f, pattern) and not f.endswith(".zarr.zip")
                      and os.path.isfile(os.path.join(zip_dir, f)))
    if not archives:
        fail(f"no archive matching {pattern!r} in {zip_dir}; download it with `bash scripts/data.sh`")
    return archives


def target_folder(extract_dir, archive):
    """EXTRACT_DIR/<archive name without .zip>; Refused unless that is a plain child folder of it."""
    stem = archive[: -len(".zip")] if archive.lower().endswith(".zip") else archive
    if stem == "EuroSAT_RGB":
        stem = "EuroSAT"  # zenodo's name for the same RGB data
    if not stem.strip(".") or os.path.basename(stem) != stem:  # '', '.', '..', '...' would leave EXTRACT_DIR
        raise Refused(f"its name without .zip ({stem!r}) is no folder name to unpack into under "
                      f"{extract_dir}; rename the archive (e.g. to EuroSAT.zip) and rerun")
    dest = os.path.join(extract_dir, stem)
    if os.path.islink(dest) or (os.path.exists(dest) and not os.path.isdir(dest)):
        raise Refused(f"{dest} is a link or a file, not a folder; move it away and rerun")
    return dest


def plan(zf):
    """(member, relative path) for each file, the common top folder stripped; Refused on an unsafe entry."""
    names = [i.filename for i in zf.infolist() if not i.filename.startswith("__MACOSX/")]
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise Refused(f"unsafe entry {name!r} would land outside the target folder (zip-slip); refused")
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


def check_inside(dest, members):
    """Refused if a file's folder resolves outside DEST (a second zip-slip guard, on resolved paths: links).

    Only the folders are resolved: a link at a file's own path is replaced by the file, not written through.
    """
    root = os.path.realpath(dest)
    for info, rel in members:
        folder = os.path.realpath(os.path.dirname(os.path.join(dest, rel)))
        if folder != root and not folder.startswith(root + os.sep):
            raise Refused(f"unsafe entry {info.filename!r} would land outside {dest} (zip-slip); refused")


def check_sizes(src, members, extract_dir):
    """Refused if the declared uncompressed sizes exceed the free disk space or MAX_RATIO x the archive."""
    total = sum(info.file_size for info, _ in members)
    free = shutil.disk_usage(extract_dir).free
    if total > free:
        raise Refused(f"it expands to {total / 1e6:,.1f} MB but only {free / 1e6:,.1f} MB are free on the "
                      f"disk of {extract_dir}; free some space or pass an EXTRACT_DIR on a bigger disk")
    size = max(os.path.getsize(src), 1)  # the file on disk: unlike declared compressed sizes, it cannot lie
    if total > RATIO_CHECK_FROM and total > MAX_RATIO * size:
        raise Refused(f"it declares {total:,} bytes uncompressed, {total / size:,.0f}x its own {size:,} "
                      f"bytes (over {MAX_RATIO}x: a zip bomb, or not the EuroSAT archive, which expands "
                      "about 1x); refused. Delete it and download it again with `bash scripts/data.sh`")


def open_unclipped(zf, info):
    """zf.open(info), able to read past the entry's declared size.

    zipfile cuts an entry at its declared size (then fails on the CRC, or truncates silently if the CRC was
    forged), so our own count in copy_counted would never see an overlong entry. Two chunks of slack let that
    count see it and stop the entry with a clear message."""
    loose = copy.copy(info)
    loose.file_size = info.file_size + 2 * CHUNK
    return zf.open(loose)


def copy_counted(fin, fout, info):
    """Copy in chunks, counting: an entry that yields more (or fewer) bytes than it declares is stopped."""
    written = 0
    while chunk := fin.read(CHUNK):
        written += len(chunk)
        if written > info.file_size:
            raise Refused(f"entry {info.filename!r} grows past its declared size of {info.file_size:,} "
                          "bytes (a zip bomb or a tampered archive); extraction stopped. Delete it and "
                          "download it again with `bash scripts/data.sh`")
        fout.write(chunk)
    if written != info.file_size:
        raise Refused(f"entry {info.filename!r} has {written:,} bytes, not the {info.file_size:,} it "
                      "declares (a corrupt archive); delete it and download it again with "
                      "`bash scripts/data.sh`")


def new_temp(path):
    """A new file PATH.<random>.part, created exclusively: O_EXCL never opens a link or an old file."""
    tmp = f"{path}.{secrets.token_hex(6)}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return tmp, os.open(tmp, flags, 0o666)  # 0o666 less the umask, as open() would give


def extract_entry(zf, info, path):
    """Write one entry to PATH through a temp file: no half file under the real name, whatever goes wrong."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp, fd = new_temp(path)
    try:
        # reading to the end checks the CRC
        with os.fdopen(fd, "wb") as fout, open_unclipped(zf, info) as fin:
            copy_counted(fin, fout, info)
        os.replace(tmp, path)  # a link at PATH is replaced itself, not written through
    except BaseException:  # a bad CRC, an overlong entry, a full disk, Ctrl-C
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def extract(src, dest, extract_dir):
    """Check the whole archive, then unpack it into DEST; raises on any failure."""
    with zipfile.ZipFile(src) as zf:
        members = plan(zf)
        check_inside(dest, members)
        check_sizes(src, members, extract_dir)
        print(f"{os.path.basename(src)}: extracting {len(members)} files to {dest}")
        for info, rel in members:
            extract_entry(zf, info, os.path.join(dest, rel))


def hint(error, extract_dir):
    """What to do about an archive that failed with ERROR."""
    if isinstance(error, Refused):
        return ""  # its message says it already
    if isinstance(error, (zipfile.BadZipFile, EOFError, zlib.error)):
        return ". If it is a truncated download, delete it and rerun `bash scripts/data.sh`"
    if isinstance(error, (NotImplementedError, RuntimeError)):  # e.g. deflate64 or an encrypted entry
        return ". zipfile cannot read it: unpack it by hand (e.g. with 7z) or download it again"
    return f". Check that {extract_dir} is writable and has free space"


def unpack(zip_dir, extract_dir, archive):
    """Unpack one archive unless already done; False (after a message naming it) if it failed."""
    src = os.path.join(zip_dir, archive)
    marker = os.path.join(extract_dir, f".extracted_{archive}")
    if os.path.exists(marker):
        print(f"{archive}: already extracted under {extract_dir} (delete {marker} to extract again)")
        return True
    try:
        dest = target_folder(extract_dir, archive)
        extract(src, dest, extract_dir)
        with open(marker, "w") as f:
            f.write(f"{src}\n")
    except (Refused, zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError) as error:
        print(f"FAILED {src}: {type(error).__name__}: {error}{hint(error, extract_dir)}", file=sys.stderr)
        return False
    print(f"{archive}: done")
    return True


zip_dir, extract_dir, pattern = sys.argv[1:4]
check_dirs(zip_dir, extract_dir)
archives = find_archives(zip_dir, pattern)
failed = [archive for archive in archives if not unpack(zip_dir, extract_dir, archive)]
if failed:
    fail(f"{len(failed)} of {len(archives)} archive(s) failed: {', '.join(failed)}")
print(f"unzip_files.sh: {len(archives)} archive(s) extracted or already there under {extract_dir}")
EOF

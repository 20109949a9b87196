#!/usr/bin/env bash
# Everything the tests need on a fresh machine, then the tests: the Python packages, and Debian's Chromium for the
# browser tests (Playwright drives it; it never downloads a browser). Arguments go to pytest.
#   bash tests/run.sh                # in a virtualenv or wherever `python` should get the packages
#   bash tests/run.sh -k security    # a subset
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install -q -r requirements-dev.txt
if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then
    if command -v apt-get >/dev/null; then
        sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -q && $sudo apt-get install -y -q chromium
    else
        echo "error: the browser tests need Chromium: install it and set CHROMIUM_PATH to its binary." >&2
        exit 2
    fi
fi
python -m pytest "$@"

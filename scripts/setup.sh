# Shared setup for ./run.sh and ./test.sh (sourced, not executed).
# Creates .venv with the project's pinned requirements and installs the project itself
# into it (editable: imports of sleeplab/ and tools/ work from anywhere); re-installs
# only when a requirements file or pyproject.toml changed, so the second start is fast.

ensure_venv() {
    local py="${PYTHON:-python3}"
    if ! command -v "$py" >/dev/null 2>&1; then
        echo "error: $py not found; install Python 3.11 or set PYTHON=/path/to/python3" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating virtual environment in .venv"
        "$py" -m venv .venv
    fi
    local stamp=".venv/.requirements-$(cat "$@" | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "==> installing $* into .venv"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v "is ignored" || true
        local args=()
        for req in "$@"; do args+=(-r "$req"); done
        .venv/bin/python -m pip install --quiet --disable-pip-version-check "${args[@]}" 2>&1 \
            | grep -v "is ignored" || true
        # pip's exit status is hidden by the filter above: check the result instead.
        .venv/bin/python -m pip check >/dev/null 2>&1 || { .venv/bin/python -m pip check; exit 1; }
        touch "$stamp"
    fi
    ensure_project
}

ensure_project() {
    # Editable install (no copy): the venv imports this folder's code. Done again when
    # pyproject.toml changed or the venv's install points at another folder.
    local stamp=".venv/.project-$(sha256sum < pyproject.toml | cut -c1-16)"
    # -I: the check must not import from the current folder, only through the install.
    if [ ! -f "$stamp" ] || ! .venv/bin/python -I -c "import sys, sleeplab, tools
sys.exit(not all(m.__file__.startswith(sys.argv[1]) for m in (sleeplab, tools)))" "$PWD/" \
            >/dev/null 2>&1; then
        echo "==> installing the project into .venv (editable)"
        # Its output (setuptools' notes on editable installs) only matters when it fails.
        local log
        if ! log=$(.venv/bin/python -m pip install --quiet --disable-pip-version-check \
                       --no-deps -e . 2>&1); then
            echo "$log" | grep -v "is ignored" >&2
            exit 1
        fi
        .venv/bin/python -I -c "import sleeplab, tools" || exit 1
        rm -f .venv/.project-*
        touch "$stamp"
    fi
}

ensure_chromium() {
    # The browser test drives Debian's chromium with Playwright (never 'playwright install').
    if [ -x /usr/bin/chromium ]; then return 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's chromium for the browser test"
        apt-get update -qq >/dev/null && \
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
    fi
    if [ ! -x /usr/bin/chromium ]; then
        echo "warning: /usr/bin/chromium is missing and could not be installed;" \
             "the browser test will fail (install Debian's chromium package)" >&2
    fi
}

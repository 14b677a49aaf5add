# shellcheck shell=bash
# Sourced by scripts/test, scripts/pgshift and .ci/run: make sure the repository's .venv
# exists and holds `pip install -e '.[dev]'` for the current pyproject.toml.
#
# Needs only Python >= 3.11 (with venv/ensurepip; as root on Debian, python3-venv is
# installed when missing) and access to PyPI. Silent unless it installs something.
# Sets PGSHIFT_ROOT (the repository) and PGSHIFT_VENV (its .venv).

set -euo pipefail

PGSHIFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGSHIFT_VENV="${PGSHIFT_ROOT}/.venv"
export PGSHIFT_ROOT PGSHIFT_VENV

_pgshift_say() { printf 'bootstrap: %s\n' "$*" >&2; }

_pgshift_find_python() {
    local candidate
    for candidate in "${PGSHIFT_PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [[ -n "${candidate}" ]] || continue
        command -v "${candidate}" >/dev/null 2>&1 || continue
        if "${candidate}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "${candidate}"
            return 0
        fi
    done
    _pgshift_say "no Python >= 3.11 found (looked for python3, python3.13, python3.12, python3.11)"
    _pgshift_say "install one (Debian: apt-get install python3 python3-venv) or set PGSHIFT_PYTHON"
    return 1
}

_pgshift_make_venv() {
    local python
    python="$(_pgshift_find_python)"
    _pgshift_say "creating ${PGSHIFT_VENV} with $("${python}" -V 2>&1)"
    if "${python}" -m venv "${PGSHIFT_VENV}" >/dev/null 2>&1; then
        return 0
    fi
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        local minor
        minor="$("${python}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        _pgshift_say "venv failed; installing Debian's python3-venv / python${minor}-venv"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3-venv "python${minor}-venv" >/dev/null \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                python3-venv >/dev/null
        rm -rf "${PGSHIFT_VENV}/bin" "${PGSHIFT_VENV}/lib" "${PGSHIFT_VENV}/include" \
            "${PGSHIFT_VENV}/pyvenv.cfg"
        "${python}" -m venv "${PGSHIFT_VENV}" && return 0
    fi
    _pgshift_say "could not create a virtualenv: install python3-venv (Debian) and retry"
    return 1
}

_pgshift_bootstrap() {
    local stamp want have="" fresh=0
    mkdir -p "${PGSHIFT_VENV}"
    # One bootstrap at a time (two scripts started together must not both pip install).
    exec {_pgshift_lock_fd}>"${PGSHIFT_VENV}/.bootstrap.lock"
    if command -v flock >/dev/null 2>&1; then
        flock "${_pgshift_lock_fd}"
    fi
    if [[ ! -x "${PGSHIFT_VENV}/bin/python" ]] || ! "${PGSHIFT_VENV}/bin/python" -c '' 2>/dev/null; then
        _pgshift_make_venv
        fresh=1
    fi
    stamp="${PGSHIFT_VENV}/.pgshift-install.sha256"
    want="$(sha256sum "${PGSHIFT_ROOT}/pyproject.toml" | cut -d' ' -f1)"
    [[ -f "${stamp}" ]] && have="$(cat "${stamp}")"
    if [[ "${fresh}" == 1 || "${want}" != "${have}" ]]; then
        _pgshift_say "installing pgshift (pip install -e '.[dev]') into ${PGSHIFT_VENV}"
        rm -f "${stamp}"
        local log="${PGSHIFT_VENV}/.pgshift-install.log"
        if ! "${PGSHIFT_VENV}/bin/python" -m pip install --disable-pip-version-check \
            -e "${PGSHIFT_ROOT}[dev]" >"${log}" 2>&1; then
            tail -n 40 "${log}" >&2
            _pgshift_say "pip install failed (full log: ${log})"
            return 1
        fi
        printf '%s\n' "${want}" >"${stamp}"
        _pgshift_say "done"
    fi
    exec {_pgshift_lock_fd}>&-
}

_pgshift_bootstrap

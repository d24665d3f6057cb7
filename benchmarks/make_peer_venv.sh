#!/usr/bin/env bash
# Create the virtual environment of a peer library used by benchmarks/, outside the repository.
#
#   bash benchmarks/make_peer_venv.sh diffusers
#
# The venv lives at ${STDIFF_PEER_VENVS:-$HOME/.cache/stdiff-peers}/<peer>. torch is NOT installed
# there (a CUDA build is gigabytes): the peer is installed with --no-deps plus the small runtime
# dependencies its metadata declares (minus torch), and a .pth file appends the project venv's
# site-packages to sys.path so torch is reused from it. The peer venv's own site-packages come
# first on sys.path, so the peer's dependencies win over the project's. Idempotent: an existing
# venv that already imports the peer and torch is left as it is.
set -euo pipefail

peer="${1:-diffusers}"
# Extra pins per peer: PyPOTS 1.5 needs transformers 4.57.6 and a binary tokenizers wheel.
extra=()
# nodeps: the peer's own dependencies that require torch; they too are installed with --no-deps.
nodeps=()
case "$peer" in
    diffusers) spec="diffusers" ;;
    pypots)
        spec="pypots==1.5"
        nodeps=(tsdb pygrinder benchpots ai4ts)
        extra=("transformers==4.57.6" "--only-binary=tokenizers")
        ;;
    *) echo "make_peer_venv.sh: unknown peer '$peer' (known: diffusers, pypots)" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "$0")/.." && pwd)"
project_py="$repo/.venv/bin/python"
venv="${STDIFF_PEER_VENVS:-$HOME/.cache/stdiff-peers}/$peer"
python="${PYTHON:-python3}"

if [[ ! -x "$project_py" ]]; then
    echo "make_peer_venv.sh: $project_py is missing; create the project venv first (make test)" >&2
    exit 1
fi
project_site="$("$project_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
project_ver="$("$project_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
base_ver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$project_ver" != "$base_ver" ]]; then
    echo "make_peer_venv.sh: $python is Python $base_ver but the project venv is $project_ver;" \
        "torch's extension modules need the same version (set PYTHON=python$project_ver)" >&2
    exit 1
fi

check() {
    "$venv/bin/python" -c "import $peer, torch; print('$peer', $peer.__version__, 'torch', \
torch.__version__, 'from', torch.__file__)"
}

if [[ -x "$venv/bin/python" ]] && check >/dev/null 2>&1; then
    echo "peer venv $venv is ready: $(check)"
    exit 0
fi

echo "creating peer venv $venv"
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --no-deps "$spec" "${nodeps[@]}"

# The runtime requirements (no extras) of everything installed so far, from its metadata,
# without torch and without the packages installed above.
mapfile -t reqs < <("$venv/bin/python" - "$peer" "${nodeps[@]}" <<'EOF'
import re
import sys
from importlib.metadata import requires

done = {n.lower() for n in sys.argv[1:]} | {"torch"}
for dist in sys.argv[1:]:
    for req in requires(dist) or []:
        if "extra ==" in req:
            continue
        name = re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]
        if name.lower() not in done:
            print(req.split(";")[0].strip())
EOF
)
echo "installing the runtime dependencies of $peer: ${reqs[*]}"
"${pip[@]}" install "${reqs[@]}" "${extra[@]}"
if "$venv/bin/python" -m pip show -q torch >/dev/null 2>&1; then
    echo "make_peer_venv.sh: torch was installed into $venv; it should come from $project_site" >&2
    exit 1
fi

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# A bare directory line in a .pth file is appended to sys.path, after the venv's own site-packages.
echo "$project_site" >"$site/stdiff-project-venv.pth"
echo "peer venv $venv is ready: $(check)"

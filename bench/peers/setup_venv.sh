#!/usr/bin/env bash
# Build the peers' virtual environment for bench/bench_peers.py (default: /tmp/peers-venv).
#
#   bash bench/peers/setup_venv.sh [VENV]
#
# CPU only: torch 2.13.0 first (so pip does not pull a CUDA build; where the default index only
# has CUDA builds, point this one install at PyTorch's CPU wheel index), then the peers pinned
# to the versions the bench was written for.  Two wrinkles, both handled at run time by bench/peers:
# * torchvision 0.28.0 (the release for torch 2.13) exists on the index only as a CUDA build;
#   its C++ ops cannot load with the CPU torch, so common.shim_torchvision() skips their
#   registration (the peers use only torchvision's Python transforms).
# * tiatoolbox 2.1.3 declares torch<2.13 and torchvision<0.28; it is installed with --no-deps
#   after its other requirements (it runs fine on torch 2.13 here).
set -euo pipefail
VENV=${1:-/tmp/peers-venv}
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --upgrade pip
"$PIP" install torch==2.13.0
"$PIP" install torchvision==0.28.0
CONSTRAINTS=$(mktemp)
printf 'torch==2.13.0\ntorchvision==0.28.0\n' > "$CONSTRAINTS"
"$PIP" install -c "$CONSTRAINTS" monai==1.6.1 wsinfer==0.6.1 openslide-python openslide-bin
"$PIP" install --no-deps tiatoolbox==2.1.3
REQS=$(mktemp)
"$VENV/bin/python" - "$REQS" <<'EOF'
import re
import sys
from importlib.metadata import requires

keep = [r for r in requires("tiatoolbox") or []
        if "extra ==" not in r and not re.match(r"torch(vision)?\b", r)]
open(sys.argv[1], "w").write("\n".join(keep) + "\n")
EOF
"$PIP" install -c "$CONSTRAINTS" -r "$REQS"
rm -f "$CONSTRAINTS" "$REQS"
"$PIP" list 2>/dev/null | grep -iE '^(torch|torchvision|monai|wsinfer|tiatoolbox|openslide-python|openslide-bin) '

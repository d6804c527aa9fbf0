# Sourced by the ptuning/*.sh scripts. They cd into ptuning/ before running, so paths the user gives
# (relative to where they called from) are made absolute first.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# An existing file or folder as an absolute path; anything else (a hub id) unchanged.
abs() { if [ -e "$1" ]; then (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); else echo "$1"; fi; }

# An output folder (it may not exist yet) as an absolute path.
out_dir() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

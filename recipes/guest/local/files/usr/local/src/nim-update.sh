#!/bin/sh
# nim-update.sh [--force] - the Nim compiler: fetch from GitHub, bootstrap it
# (build_all.sh fetches its C sources) when the source changed, and link nim
# and nimble into /usr/local/bin.
. /usr/local/src/update-lib.sh
src_fetch Nim https://github.com/nim-lang/Nim.git "${NIM_BRANCH:-devel}"
if [ -n "$SRC_BUILD" ]; then
	cd "$SRC/Nim"
	sh build_all.sh
	for b in nim nimble; do
		[ -x "bin/$b" ] && ln -sf "$SRC/Nim/bin/$b" "/usr/local/bin/$b"
	done
	src_built Nim
fi

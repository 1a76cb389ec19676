#!/bin/sh
# rsync-update.sh [--force] - rsync from GitHub, built and installed into
# /usr/local when the source changed.
. /usr/local/src/update-lib.sh
src_fetch rsync https://github.com/RsyncProject/rsync.git "${RSYNC_BRANCH:-master}"
if [ -n "$SRC_BUILD" ]; then
	cd "$SRC/rsync"
	./configure --prefix=/usr/local --disable-md2man
	make -j"$(jobs)"
	make install
	src_built rsync
fi

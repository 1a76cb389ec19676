#!/bin/sh
# ndjbdns-update.sh [--force] - the DJBDNS port ndjbdns (dnscache, tinydns):
# fetch from GitHub, build and install into /usr/local when the source changed.
. /usr/local/src/update-lib.sh
src_fetch ndjbdns https://github.com/pjps/ndjbdns.git "${NDJBDNS_BRANCH:-master}"
if [ -n "$SRC_BUILD" ]; then
	cd "$SRC/ndjbdns"
	[ -x configure ] || autoreconf -fi
	./configure --prefix=/usr/local --sysconfdir=/usr/local/etc
	make -j"$(jobs)"
	make install
	src_built ndjbdns
fi

#!/bin/sh
# board-power.sh STATEFILE on|off|state: a power switch for the tests, its
# state kept in STATEFILE; every switch appended to STATEFILE.log.
f=$1
case $2 in
on | off) echo "$2" >"$f" && echo "$2" >>"$f.log" ;;
state) [ -f "$f" ] && cat "$f" || echo off ;;
*) echo "usage: $0 STATEFILE on|off|state" >&2 && exit 2 ;;
esac

# /usr/local/src/update-lib.sh - sourced by the *-update.sh installer scripts.
# Fetches a GitHub project into /usr/local/src/NAME and tells whether it must
# be (re)built: only when the checked-out commit differs from the one last
# built (recorded in /usr/local/src/NAME.built) or with --force.
#
#   . /usr/local/src/update-lib.sh
#   src_fetch NAME URL BRANCH
#   if [ -n "$SRC_BUILD" ]; then build...; src_built NAME; fi
# (set -e holds in the build: a failing step stops the script unrecorded)
set -e
SRC=${SRC:-/usr/local/src}
FORCE=
for a in "$@"; do
	case $a in
	-f | --force) FORCE=yes ;;
	-h | --help)
		echo "usage: $0 [--force]  fetch, then build and install only when the source changed"
		exit 0
		;;
	*)
		echo "$0: unknown argument $a" >&2
		exit 2
		;;
	esac
done

say() { echo "${0##*/}: $*"; }

# src_fetch NAME URL BRANCH: clone or update $SRC/NAME (shallow), exiting
# with a message when that fails; sets SRC_BUILD=yes when a build is due
# (the commit differs from the one last built, or --force), else empty.
src_fetch() {
	SRC_BUILD=
	command -v git >/dev/null 2>&1 || {
		say "git is missing (pifarm run guest --apt-install N installs it)"
		exit 1
	}
	if [ -d "$SRC/$1/.git" ]; then
		git -C "$SRC/$1" remote set-url origin "$2"
		git -C "$SRC/$1" fetch -q --depth 1 origin "$3" || { say "fetching $2 failed"; exit 1; }
		git -C "$SRC/$1" reset -q --hard FETCH_HEAD || exit 1
	else
		git clone -q --depth 1 --branch "$3" "$2" "$SRC/$1" || { say "cloning $2 failed"; exit 1; }
	fi
	src_rev=$(git -C "$SRC/$1" rev-parse HEAD) || exit 1
	if [ -z "$FORCE" ] && [ "$src_rev" = "$(cat "$SRC/$1.built" 2>/dev/null)" ]; then
		say "$1 is up to date at $src_rev: nothing to build"
		return 0
	fi
	say "building $1 at $src_rev"
	SRC_BUILD=yes
}

# src_built NAME: record the commit just built.
src_built() { git -C "$SRC/$1" rev-parse HEAD >"$SRC/$1.built"; }

# jobs: parallel make jobs
jobs() { nproc 2>/dev/null || echo 2; }

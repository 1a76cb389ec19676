# lib.sh - bash functions shared by the test guest builders (build.sh,
# build-debian.sh). Sourced; the builder sets TG_NAME (its name in messages)
# and TG_T0 (its start, date +%s%N) first.

# tg_usage FILE: the comment block at the top of FILE, up to `set -euo`.
tg_usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$1"; }

tg_die() { echo "$TG_NAME: $*" >&2; exit 1; }

# tg_log TEXT: a progress line with the seconds since the builder started.
tg_log() { printf '[%6.1fs] %s\n' "$(( ($(date +%s%N) - TG_T0) / 1000000 ))e-3" "$*"; }

# tg_host_archive SUITE: the archive URL this host's apt configuration uses for
# SUITE (bookworm, bookworm-security), read at run time; nothing when it has
# none. No mirror is ever named in the builders themselves.
tg_host_archive() {
  apt-get indextargets --format '$(RELEASE) $(REPO_URI)' 2>/dev/null |
    awk -v s="$1" '$1 == s { sub(/\/$/, "", $2); print $2; exit }'
}

# tg_host_tools NEED...: install the Debian packages of the needs that are
# missing, in one apt-get call (an apt-get update first only when that fails).
# A need is COMMAND:PACKAGE (COMMAND not on PATH) or /PATH:PACKAGE (no such
# file). Nothing happens when nothing is missing.
tg_host_tools() {
  local want=() t
  for t in "$@"; do
    case $t in
      /*) [ -e "${t%%:*}" ] || want+=("${t#*:}") ;;
      *) command -v "${t%%:*}" >/dev/null || want+=("${t#*:}") ;;
    esac
  done
  [ ${#want[@]} = 0 ] && return 0
  mapfile -t want < <(printf '%s\n' "${want[@]}" | sort -u)
  tg_log "installing host packages: ${want[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${want[@]}" >/dev/null; } ||
    tg_die "could not install host packages: ${want[*]}"
}

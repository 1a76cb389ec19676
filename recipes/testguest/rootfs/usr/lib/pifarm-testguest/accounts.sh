# accounts.sh: shared by the account tools of pifarm's test guest (useradd,
# usermod, userdel, groupadd, groupmod, groupdel, gpasswd, chpasswd, adduser,
# deluser). They edit /etc/passwd, /etc/shadow, /etc/group and /etc/gshadow
# directly, the way shadow's tools leave them. Values reach awk through the
# environment, so backslashes and other characters in them stay as they are.

ETC=${ACCOUNTS_ETC:-/etc}
PASSWD=$ETC/passwd
SHADOW=$ETC/shadow
GROUP=$ETC/group
GSHADOW=$ETC/gshadow
PROG=${0##*/}

die() { _c=$1; shift; echo "$PROG: $*" >&2; exit "$_c"; }
warn() { echo "$PROG: $*" >&2; }

need_root() { [ "$(id -u)" = 0 ] || die 1 "Permission denied."; }

# acc_has FILE KEY: is there a line for KEY?
acc_has() { K=$2 awk -F: '$1 == ENVIRON["K"] { f = 1; exit } END { exit !f }' "$1"; }

# acc_get FILE KEY FIELD: print a field of KEY's line (fails when there is none)
acc_get() {
  K=$2 N=$3 awk -F: '$1 == ENVIRON["K"] { print $(ENVIRON["N"]); f = 1; exit } END { exit !f }' "$1"
}

# acc_key_by FILE FIELD VALUE: print the name (field 1) of the first line whose FIELD is VALUE
acc_key_by() {
  N=$2 V=$3 awk -F: '$(ENVIRON["N"]) == ENVIRON["V"] { print $1; f = 1; exit } END { exit !f }' "$1"
}

# acc_edit FILE AWK-PROGRAM: rewrite FILE through awk, keeping owner and mode
acc_edit() {
  [ -f "$1" ] || return 0
  awk -F: -v OFS=: "$2" "$1" > "$1.pifarm-new" || { rm -f "$1.pifarm-new"; return 1; }
  cat "$1.pifarm-new" > "$1"
  rm -f "$1.pifarm-new"
}

# acc_set FILE KEY FIELD VALUE
acc_set() {
  K=$2 N=$3 V=$4 acc_edit "$1" '$1 == ENVIRON["K"] { $(ENVIRON["N"]) = ENVIRON["V"] } { print }'
}

# acc_del FILE KEY
acc_del() { K=$2 acc_edit "$1" '$1 != ENVIRON["K"] { print }'; }

# acc_append FILE LINE
acc_append() {
  [ -f "$1" ] || return 0
  if [ -s "$1" ] && [ "$(tail -c 1 "$1" | od -An -c | tr -d ' ')" != '\n' ]; then echo >> "$1"; fi
  printf '%s\n' "$2" >> "$1"
}

# member lists (field 4 of group and gshadow)
acc_add_member() { # GROUP USER
  for _f in "$GROUP" "$GSHADOW"; do
    K=$1 U=$2 acc_edit "$_f" '$1 == ENVIRON["K"] {
        n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == ENVIRON["U"]) { print; next }
        $4 = ($4 == "" ? ENVIRON["U"] : $4 "," ENVIRON["U"]) } { print }'
  done
}
acc_del_member() { # GROUP USER   (GROUP "*" = every group)
  for _f in "$GROUP" "$GSHADOW"; do
    K=$1 U=$2 acc_edit "$_f" 'ENVIRON["K"] == "*" || $1 == ENVIRON["K"] {
        n = split($4, m, ","); s = ""
        for (i = 1; i <= n; i++) if (m[i] != ENVIRON["U"] && m[i] != "") s = (s == "" ? m[i] : s "," m[i])
        $4 = s } { print }'
  done
}
acc_rename_member() { # OLD NEW in every group
  for _f in "$GROUP" "$GSHADOW"; do
    O=$1 U=$2 acc_edit "$_f" '{
        n = split($4, m, ","); s = ""
        for (i = 1; i <= n; i++) { x = (m[i] == ENVIRON["O"] ? ENVIRON["U"] : m[i]); s = (i == 1 ? x : s "," x) }
        if (n > 0) $4 = s; print }'
  done
}
acc_groups_of() { # USER: names of the groups listing USER as a member
  U=$1 awk -F: '{ n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == ENVIRON["U"]) print $1 }' "$GROUP"
}

# acc_gid GROUP: gid of a group given by name or number
acc_gid() {
  case $1 in
    ''|*[!0-9]*) acc_get "$GROUP" "$1" 3 ;;
    *) acc_key_by "$GROUP" 3 "$1" > /dev/null && echo "$1" ;;
  esac
}

# acc_next_id FILE FIELD MIN MAX: one above the highest id in [MIN, MAX]
# (the lowest free one when that is taken), as shadow's tools allocate
acc_next_id() {
  N=$2 LO=$3 HI=$4 awk -F: '{ used[$(ENVIRON["N"]) + 0] = 1 }
    END { lo = ENVIRON["LO"] + 0; hi = ENVIRON["HI"] + 0; top = lo - 1
          for (u in used) if (u + 0 >= lo && u + 0 <= hi && u + 0 > top) top = u + 0
          if (top < hi) { print top + 1; exit }
          for (i = lo; i <= hi; i++) if (!(i in used)) { print i; exit }
          exit 1 }' "$1"
}
# acc_next_sys_id FILE FIELD: highest free id in [100, 999], as for system accounts
acc_next_sys_id() {
  N=$2 awk -F: '{ used[$(ENVIRON["N"]) + 0] = 1 }
    END { for (i = 999; i >= 100; i--) if (!(i in used)) { print i; exit } exit 1 }' "$1"
}

acc_valid_name() {
  case $1 in
    ''|-*|*[!A-Za-z0-9._-]*) return 1 ;;
  esac
  [ ${#1} -le 32 ]
}

acc_today() { echo $(( $(date +%s) / 86400 )); }

# acc_make_home DIR UID GID [SKEL]
acc_make_home() {
  if [ -e "$1" ]; then
    warn "warning: the home directory $1 already exists."
    warn "Not copying any file from skel directory into it."
    return 0
  fi
  mkdir -p "$(dirname "$1")" && mkdir "$1" || return 1
  [ -d "${4:-/etc/skel}" ] && cp -a "${4:-/etc/skel}/." "$1/"
  chown -R "$2:$3" "$1"
  chmod 755 "$1"
}

# acc_hash PASSWORD: SHA-512 crypt hash
acc_hash() { printf '%s\n' "$1" | mkpasswd -m sha512 -P 0; }

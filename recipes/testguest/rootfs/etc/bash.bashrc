# /etc/bash.bashrc: every interactive bash reads this first

[ -z "${PS1-}" ] && return

shopt -s checkwinsize
PS1='${debian_chroot:+($debian_chroot)}\u@\h:\w\$ '

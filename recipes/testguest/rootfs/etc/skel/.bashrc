# ~/.bashrc: interactive bash shells

case $- in
  *i*) ;;
  *) return ;;
esac

HISTCONTROL=ignoreboth
HISTSIZE=1000
HISTFILESIZE=2000
shopt -s histappend checkwinsize

# the RaspiOS prompt shape (user@host:dir $), without colours
PS1='${debian_chroot:+($debian_chroot)}\u@\h:\w \$ '

alias ls='ls --color=auto'
alias grep='grep --color=auto'
alias ll='ls -l'
alias la='ls -A'

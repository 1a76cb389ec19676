# ~/.bashrc of root: the prompt comes from /etc/bash.bashrc (root@host:dir#)

/*
 * sudo for pifarm's test guest: a small setuid-root helper, linked statically.
 *
 * Who may use it: root, and users granted NOPASSWD by a rule in /etc/sudoers or
 * /etc/sudoers.d/ whose first word names the user, one of the user's %groups,
 * or ALL. Rules without NOPASSWD would need a password, which this helper
 * cannot check: it refuses them the way `sudo -n` does. Nothing else in the
 * rules (hosts, run-as lists, command lists) is looked at.
 *
 * What it does like sudo: -u USER, -g GROUP, -i (login shell of the target
 * user, commands run through `SHELL -c`), -s, -E/--preserve-env, -D DIR, -b,
 * -n, -S, -k, -K, -v, -l, -V, -h; the environment is reset to a short list
 * (TERM, LANG, ...) plus HOME, USER, LOGNAME, SHELL, MAIL, SUDO_USER, SUDO_UID,
 * SUDO_GID, SUDO_COMMAND and PATH=secure_path.
 * Accounts are read from /etc/passwd and /etc/group directly.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define SECURE_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAXGROUPS 64
#define LINE 4096

struct account {
    char name[64];
    uid_t uid;
    gid_t gid;
    char home[512];
    char shell[512];
};

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "sudo: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(1);
}

static void copy(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

/* split a colon separated line in place; returns the number of fields */
static int split(char *line, char **field, int max)
{
    int n = 0;
    char *p = line;
    line[strcspn(line, "\n")] = '\0';
    while (n < max) {
        field[n++] = p;
        p = strchr(p, ':');
        if (!p)
            break;
        *p++ = '\0';
    }
    return n;
}

static int numeric(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

/* look an account up by name, or by uid when name is NULL */
static int find_account(const char *name, uid_t uid, struct account *acc)
{
    char line[LINE], *f[7];
    int found = 0;
    FILE *fp = fopen("/etc/passwd", "r");
    if (!fp)
        return 0;
    while (!found && fgets(line, sizeof line, fp)) {
        if (split(line, f, 7) < 7)
            continue;
        if (name ? strcmp(f[0], name) != 0 : (uid_t)strtoul(f[2], NULL, 10) != uid)
            continue;
        copy(acc->name, sizeof acc->name, f[0]);
        acc->uid = (uid_t)strtoul(f[2], NULL, 10);
        acc->gid = (gid_t)strtoul(f[3], NULL, 10);
        copy(acc->home, sizeof acc->home, f[5]);
        copy(acc->shell, sizeof acc->shell, *f[6] ? f[6] : "/bin/sh");
        found = 1;
    }
    fclose(fp);
    return found;
}

/* gid of a group given by name or number; -1 when unknown */
static long find_group(const char *name)
{
    char line[LINE], *f[4];
    long gid = -1;
    FILE *fp;
    if (numeric(name))
        return strtol(name, NULL, 10);
    fp = fopen("/etc/group", "r");
    if (!fp)
        return -1;
    while (gid < 0 && fgets(line, sizeof line, fp))
        if (split(line, f, 4) >= 3 && strcmp(f[0], name) == 0)
            gid = strtol(f[2], NULL, 10);
    fclose(fp);
    return gid;
}

/* the groups of an account: primary first, then every group listing it;
 * with names != NULL also their names (for %group rules) */
static int account_groups(const struct account *acc, gid_t *gids, char names[][64])
{
    char line[LINE], *f[4], *m, *save;
    int n = 0;
    FILE *fp = fopen("/etc/group", "r");
    gids[n++] = acc->gid;
    if (names)
        names[0][0] = '\0';
    if (!fp)
        return n;
    while (n < MAXGROUPS && fgets(line, sizeof line, fp)) {
        if (split(line, f, 4) < 4)
            continue;
        gid_t g = (gid_t)strtoul(f[2], NULL, 10);
        int member = (g == acc->gid);
        for (m = strtok_r(f[3], ",", &save); m && !member; m = strtok_r(NULL, ",", &save))
            member = strcmp(m, acc->name) == 0;
        if (!member)
            continue;
        if (g == acc->gid) {
            if (names)
                copy(names[0], 64, f[0]);
            continue;
        }
        if (names)
            copy(names[n], 64, f[0]);
        gids[n++] = g;
    }
    fclose(fp);
    return n;
}

/* rule verdicts: 0 none, 1 needs a password, 2 NOPASSWD */
static int check_rules(const char *path, const struct account *acc, char groups[][64], int ngroups)
{
    char line[LINE];
    int verdict = 0;
    FILE *fp = fopen(path, "r");
    if (!fp)
        return 0;
    while (fgets(line, sizeof line, fp)) {
        char *p = line, *who;
        size_t len;
        int match = 0, i;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#' || *p == '@' || strncmp(p, "Defaults", 8) == 0)
            continue;
        len = strcspn(p, " \t\n");
        who = p;
        if (!p[len])
            continue;
        p[len] = '\0';
        p += len + 1;
        /* User_Alias, Runas_Alias, Host_Alias, Cmnd_Alias definitions */
        if (len > 6 && strcmp(who + len - 6, "_Alias") == 0)
            continue;
        if (strcmp(who, "ALL") == 0 || strcmp(who, acc->name) == 0)
            match = 1;
        for (i = 0; !match && i < ngroups; i++)
            match = who[0] == '%' && groups[i][0] && strcmp(who + 1, groups[i]) == 0;
        if (!match)
            continue;
        if (strstr(p, "NOPASSWD"))
            verdict = 2;
        else if (verdict == 0)
            verdict = 1;
    }
    fclose(fp);
    return verdict;
}

static int permitted(const struct account *caller)
{
    gid_t gids[MAXGROUPS];
    char names[MAXGROUPS][64];
    int n, verdict, v;
    DIR *d;
    struct dirent *e;
    if (caller->uid == 0)
        return 2;
    n = account_groups(caller, gids, names);
    verdict = check_rules("/etc/sudoers", caller, names, n);
    d = opendir("/etc/sudoers.d");
    if (d) {
        while ((e = readdir(d)) != NULL) {
            char path[512];
            size_t len = strlen(e->d_name);
            /* sudo skips names with a dot or ending in ~ */
            if (strchr(e->d_name, '.') || (len && e->d_name[len - 1] == '~'))
                continue;
            snprintf(path, sizeof path, "/etc/sudoers.d/%s", e->d_name);
            v = check_rules(path, caller, names, n);
            if (v > verdict)
                verdict = v;
        }
        closedir(d);
    }
    return verdict;
}

/* sudo -i/-s quoting: a backslash before every character but [A-Za-z0-9_-$] */
static char *shell_command(char **argv)
{
    size_t size = 1;
    char **a, *out, *o;
    const char *s;
    for (a = argv; *a; a++)
        size += 2 * strlen(*a) + 1;
    out = o = malloc(size);
    if (!out)
        die("%s", "out of memory");
    for (a = argv; *a; a++) {
        if (a != argv)
            *o++ = ' ';
        for (s = *a; *s; s++) {
            if (!isalnum((unsigned char)*s) && !strchr("_-$", *s))
                *o++ = '\\';
            *o++ = *s;
        }
    }
    *o = '\0';
    return out;
}

static const char *keep_env[] = {
    "TERM", "COLORTERM", "DISPLAY", "XAUTHORITY", "LANG", "LANGUAGE", "TZ",
    "LS_COLORS", "COLORS", "HOSTNAME", "PS1", "PS2", NULL,
};

static int kept(const char *entry)
{
    const char **k;
    size_t len = strcspn(entry, "=");
    if (strncmp(entry, "LC_", 3) == 0)
        return 1;
    for (k = keep_env; *k; k++)
        if (strlen(*k) == len && strncmp(entry, *k, len) == 0)
            return 1;
    return 0;
}

static char *find_in_path(const char *cmd)
{
    static char path[4096];
    char dirs[] = SECURE_PATH, *dir, *save;
    struct stat st;
    if (strchr(cmd, '/'))
        return (char *)cmd;
    for (dir = strtok_r(dirs, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof path, "%s/%s", dir, cmd);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}

static void usage(FILE *to)
{
    fprintf(to,
            "usage: sudo -h | -K | -k | -V\n"
            "usage: sudo -v [-knS] [-g group] [-u user]\n"
            "usage: sudo -l [-knS] [-g group] [-u user] [command]\n"
            "usage: sudo [-bEHknS] [-D directory] [-g group] [-u user] [-i | -s] [command [arg ...]]\n");
}

int main(int argc, char **argv)
{
    struct account caller, target;
    const char *user = "root", *group = NULL, *chdir_to = NULL, *ignored = NULL;
    int login = 0, shell = 0, preserve = 0, background = 0, validate = 0, list = 0;
    int reset_ts = 0, i = 1, verdict;
    char host[256] = "localhost";
    extern char **environ;

    /* options, sudo style: clusters (-iu root), --long, --long=value */
    for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
        char *o = argv[i];
        if (strcmp(o, "--") == 0) {
            i++;
            break;
        }
        if (o[1] == '-') {
            char *val = strchr(o, '=');
            size_t len = val ? (size_t)(val - o) : strlen(o);
#define LONGOPT(s) (len == strlen(s) && strncmp(o, s, len) == 0)
#define LONGVAL() (val ? val + 1 : (i + 1 < argc ? argv[++i] : (die("option %s requires an argument", o), "")))
            if (LONGOPT("--login")) login = 1;
            else if (LONGOPT("--shell")) shell = 1;
            else if (LONGOPT("--user")) user = LONGVAL();
            else if (LONGOPT("--group")) group = LONGVAL();
            else if (LONGOPT("--chdir")) chdir_to = LONGVAL();
            else if (LONGOPT("--preserve-env")) preserve = 1;
            else if (LONGOPT("--background")) background = 1;
            else if (LONGOPT("--validate")) validate = 1;
            else if (LONGOPT("--list")) list = 1;
            else if (LONGOPT("--reset-timestamp") || LONGOPT("--remove-timestamp")) reset_ts = 1;
            else if (LONGOPT("--prompt") || LONGOPT("--close-from") || LONGOPT("--role") ||
                     LONGOPT("--type") || LONGOPT("--other-user") || LONGOPT("--host") ||
                     LONGOPT("--command-timeout")) (void)LONGVAL();
            else if (LONGOPT("--version")) {
                printf("Sudo version 1.9.5p2 (pifarm test guest helper)\n");
                return 0;
            } else if (LONGOPT("--help")) {
                usage(stdout);
                return 0;
            } else if (LONGOPT("--non-interactive") || LONGOPT("--stdin") || LONGOPT("--set-home") ||
                       LONGOPT("--askpass") || LONGOPT("--preserve-groups") || LONGOPT("--bell")) {
            } else {
                fprintf(stderr, "sudo: unrecognized option '%s'\n", o);
                usage(stderr);
                return 1;
            }
            continue;
        }
        for (char *c = o + 1; *c; c++) {
            const char **dest = NULL;
            switch (*c) {
            case 'i': login = 1; break;
            case 's': shell = 1; break;
            case 'E': preserve = 1; break;
            case 'b': background = 1; break;
            case 'v': validate = 1; break;
            case 'l': list = 1; break;
            case 'k': case 'K': reset_ts = 1; break;
            case 'n': case 'S': case 'H': case 'A': case 'P': case 'B': break;
            case 'V':
                printf("Sudo version 1.9.5p2 (pifarm test guest helper)\n");
                return 0;
            case 'h':
                usage(stdout);
                return 0;
            case 'u': dest = &user; break;
            case 'g': dest = &group; break;
            case 'D': dest = &chdir_to; break;
            case 'p': case 'C': case 'r': case 't': case 'U': case 'T': case 'R':
                dest = &ignored;
                break;
            default:
                fprintf(stderr, "sudo: invalid option -- '%c'\n", *c);
                usage(stderr);
                return 1;
            }
            if (dest) {
                const char *val = c[1] ? c + 1 : (i + 1 < argc ? argv[++i] : NULL);
                if (!val) {
                    fprintf(stderr, "sudo: option requires an argument -- '%c'\n", *c);
                    usage(stderr);
                    return 1;
                }
                *dest = val;
                break;
            }
        }
    }

    if (geteuid() != 0)
        die("%s", "effective uid is not 0, is /usr/bin/sudo on a file system with the 'nosuid' "
                  "option set or an NFS file system without root privileges?");
    gethostname(host, sizeof host - 1);
    if (!find_account(NULL, getuid(), &caller)) {
        fprintf(stderr, "sudo: you do not exist in the passwd database\n");
        return 1;
    }

    verdict = permitted(&caller);
    if (verdict < 2) {
        if (list) {
            printf("Sorry, user %s may not run sudo on %s.\n", caller.name, host);
            return 1;
        }
        if (verdict == 1)
            fprintf(stderr, "sudo: a password is required\n");
        else
            fprintf(stderr, "%s is not in the sudoers file.  This incident will be reported.\n", caller.name);
        return 1;
    }
    if (list) {
        if (i < argc) {
            char *p = find_in_path(argv[i]);
            if (!p)
                return 1;
            printf("%s\n", p);
            return 0;
        }
        printf("User %s may run the following commands on %s:\n    (ALL : ALL) NOPASSWD: ALL\n",
               caller.name, host);
        return 0;
    }
    if (validate)
        return 0;
    if (i >= argc && !login && !shell) {
        if (reset_ts)
            return 0;
        usage(stderr);
        return 1;
    }

    if (user[0] == '#' && numeric(user + 1)) {
        if (!find_account(NULL, (uid_t)strtoul(user + 1, NULL, 10), &target)) {
            memset(&target, 0, sizeof target);
            target.uid = (uid_t)strtoul(user + 1, NULL, 10);
            target.gid = target.uid;
            copy(target.name, sizeof target.name, user);
            copy(target.home, sizeof target.home, "/");
            copy(target.shell, sizeof target.shell, "/bin/sh");
        }
    } else if (!find_account(user, 0, &target)) {
        fprintf(stderr, "sudo: unknown user %s\n", user);
        return 1;
    }

    /* the command */
    char **cmdv, *sh_argv[4];
    const char *exe;
    if (login || shell) {
        const char *sh = target.shell;
        if (shell && !login && getenv("SHELL") && *getenv("SHELL"))
            sh = getenv("SHELL");
        const char *base = strrchr(sh, '/') ? strrchr(sh, '/') + 1 : sh;
        char *argv0 = malloc(strlen(base) + 2);
        if (!argv0)
            die("%s", "out of memory");
        sprintf(argv0, "%s%s", login ? "-" : "", base);
        sh_argv[0] = argv0;
        if (i < argc) {
            sh_argv[1] = "-c";
            sh_argv[2] = shell_command(argv + i);
            sh_argv[3] = NULL;
        } else {
            sh_argv[1] = NULL;
        }
        cmdv = sh_argv;
        exe = sh;
    } else {
        cmdv = argv + i;
        exe = find_in_path(argv[i]);
        if (!exe) {
            fprintf(stderr, "sudo: %s: command not found\n", argv[i]);
            return 1;
        }
    }

    /* SUDO_COMMAND: the full path and the arguments */
    char sudo_command[4096];
    size_t used = (size_t)snprintf(sudo_command, sizeof sudo_command, "%s", exe);
    for (char **a = cmdv + 1; *a && used < sizeof sudo_command; a++)
        used += (size_t)snprintf(sudo_command + used, sizeof sudo_command - used, " %s", *a);

    /* the environment */
    char **old = environ;
    static char *empty[] = {NULL};
    if (!preserve) {
        char **e;
        size_t n = 0;
        for (e = old; *e; e++)
            n++;
        char **keep = calloc(n + 1, sizeof *keep);
        if (!keep)
            die("%s", "out of memory");
        n = 0;
        for (e = old; *e; e++)
            if (kept(*e))
                keep[n++] = *e;
        environ = empty;
        for (size_t k = 0; k < n; k++)
            putenv(keep[k]);
    }
    char num[32];
    setenv("HOME", target.home, !preserve);
    setenv("SHELL", target.shell, 1);
    setenv("USER", target.name, 1);
    setenv("LOGNAME", target.name, 1);
    char mail[600];
    snprintf(mail, sizeof mail, "/var/mail/%s", target.name);
    setenv("MAIL", mail, 1);
    setenv("PATH", SECURE_PATH, 1);
    setenv("SUDO_USER", caller.name, 1);
    snprintf(num, sizeof num, "%lu", (unsigned long)caller.uid);
    setenv("SUDO_UID", num, 1);
    snprintf(num, sizeof num, "%lu", (unsigned long)caller.gid);
    setenv("SUDO_GID", num, 1);
    setenv("SUDO_COMMAND", sudo_command, 1);

    /* become the target user */
    gid_t gids[MAXGROUPS];
    int ngids = account_groups(&target, gids, NULL);
    if (group) {
        long g = find_group(group);
        if (g < 0) {
            fprintf(stderr, "sudo: unknown group %s\n", group);
            return 1;
        }
        target.gid = (gid_t)g;
    }
    if (setgroups((size_t)ngids, gids) || setgid(target.gid) || setuid(target.uid)) {
        fprintf(stderr, "sudo: unable to change to user %s: %s\n", target.name, strerror(errno));
        return 1;
    }
    if (chdir_to && chdir(chdir_to)) {
        fprintf(stderr, "sudo: unable to change directory to %s: %s\n", chdir_to, strerror(errno));
        return 1;
    }
    if (login && !chdir_to && chdir(target.home))
        fprintf(stderr, "sudo: unable to change directory to %s: %s\n", target.home, strerror(errno));

    if (background) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("sudo: fork");
            return 1;
        }
        if (pid > 0)
            return 0;
        setsid();
    }
    execv(exe, cmdv);
    fprintf(stderr, "sudo: unable to execute %s: %s\n", exe, strerror(errno));
    return errno == ENOENT ? 127 : 126;
}

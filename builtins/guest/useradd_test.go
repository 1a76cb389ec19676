package guest_test

import (
	"strings"
	"testing"
)

// --useradd refuses an existing system account (uid outside the guest's
// UID_MIN..UID_MAX from /etc/login.defs, 1000..60000 without one) before
// anything changes, naming the force option; --force-system-user lets it
// through with a warning. A regular account, or a new name, goes ahead.
func TestUseraddRefusesSystemAccounts(t *testing.T) {
	r := newRig(t, 26060)
	passwd := "root:x:0:0:root:/root:/bin/sh\n" +
		"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
		"pi:x:1000:1000:,,,:/home/pi:/bin/sh\n" +
		"old:x:600:600::/home/old:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
	for _, tc := range []struct {
		name      string
		args      []string
		loginDefs string // "" : none
		code      int
		says      []string // in stdout (code 0) or stderr
		keyIn     string   // guest file that must (code 0) or must not hold the key
	}{
		{"root", []string{"--useradd=root"}, "", 1,
			[]string{"--useradd=root: root is a system account on the guest (uid 0, outside 1000..60000", "--force-system-user"}, "/root/.ssh/authorized_keys"},
		{"daemon", []string{"--useradd=daemon"}, "", 1, []string{"daemon is a system account on the guest (uid 1,", "home /usr/sbin"}, "/usr/sbin/.ssh/authorized_keys"},
		{"nobody", []string{"--useradd=nobody"}, "", 1, []string{"(uid 65534, outside 1000..60000", "home /nonexistent"}, "/nonexistent/.ssh/authorized_keys"},
		{"UID_MIN of the guest", []string{"--useradd=pi"}, "UID_MIN\t\t\t 2000\nUID_MAX 60000\n", 1,
			[]string{"(uid 1000, outside 2000..60000 of the guest's /etc/login.defs"}, "/home/pi/.ssh/authorized_keys"},
		{"refused before anything else", []string{"--base-system", "--useradd=root"}, "", 1, []string{"root is a system account"}, "/root/.ssh/authorized_keys"},
		{"a regular account by the guest's UID_MIN", []string{"--useradd=old"}, "UID_MIN 500\n", 0, []string{"authorized the key of tester@host for old"}, "/home/old/.ssh/authorized_keys"},
		{"forced", []string{"--useradd=root", "--force-system-user"}, "", 0,
			[]string{"warning: root is a system account on the guest (uid 0", "authorized the key of tester@host for root"}, "/root/.ssh/authorized_keys"},
		{"a new name", []string{"--useradd=dave"}, "", 0, []string{"created user dave"}, "/home/dave/.ssh/authorized_keys"},
		{"force without useradd", []string{"--force-system-user"}, "", 1, []string{"--force-system-user needs --useradd=NAME"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.g.write("/etc/passwd", passwd, 0o644)
			r.g.write("/etc/rc.local", "#!/bin/sh\n# the stock one\nexit 0\n", 0o755)
			r.g.write("/etc/login.defs", tc.loginDefs, 0o644)
			before := len(r.srv.commands())
			out, errs, code := r.pifarm(append(tc.args, "1")...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errs)
			}
			for _, want := range tc.says {
				if !strings.Contains(out+errs, want) {
					t.Errorf("output lacks %q\nstdout:\n%s\nstderr:\n%s", want, out, errs)
				}
			}
			if tc.keyIn != "" {
				has := strings.Contains(r.g.read(tc.keyIn), "tester@host")
				if has != (tc.code == 0) {
					t.Errorf("%s holds the key: %v", tc.keyIn, has)
				}
			}
			if tc.code != 0 {
				if n := len(r.srv.commands()) - before; n > 1 {
					t.Errorf("%d commands sent, want at most the one that looks at the account", n)
				}
				if !strings.Contains(r.g.read("/etc/rc.local"), "the stock one") {
					t.Error("the base system was installed before the refusal")
				}
			}
		})
	}
}

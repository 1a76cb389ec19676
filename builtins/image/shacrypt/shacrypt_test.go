package shacrypt

import (
	"os/exec"
	"strings"
	"testing"
)

func TestSHA512SpecVectors(t *testing.T) {
	// from Drepper's SHA-crypt specification
	for _, tc := range []struct {
		pw, salt string
		rounds   int
		want     string
	}{
		{"Hello world!", "saltstring", 0, "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
		{"Hello world!", "saltstringsaltstring", 10000, "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."},
		// rounds below the minimum are raised to 1000 (libxcrypt's crypt(3)
		// gives the same for "$6$rounds=1000$roundstoolow$")
		{"we have a short salt string but not a short password", "roundstoolow", 10, "$6$rounds=1000$roundstoolow$yjTuW7RnC.d35QcVTFIb6uvh/7IQ1.GFtFN3i/.jwmeWEhzjf4uD/OPCb4jRl6atJGYhLst8IyR6YAtTrriMU1"},
		{"", "x", 0, "$6$x$QSmr1Bx2g4O6BzKvdkgOcyU6H91X6I/XBv5pSalMhSPkwdH6Beo3F455xZJg0v//bxVK5F4OE5k1.0xuR26MK0"},
	} {
		got, err := SHA512(tc.pw, tc.salt, tc.rounds)
		if err != nil || got != tc.want {
			t.Errorf("SHA512(%q, %q, %d) = %s, %v\nwant %s", tc.pw, tc.salt, tc.rounds, got, err, tc.want)
		}
	}
}

func TestSHA512MatchesOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is needed for this test")
	}
	for _, tc := range []struct{ pw, salt string }{
		{"raspberry", "abcdefgh"},
		{"a much longer password of more than sixty-four bytes, to cover the block loop!!", "0123456789abcdef"},
		{"pässwörd", "./AZaz09"},
	} {
		out, err := exec.Command("openssl", "passwd", "-6", "-salt", tc.salt, tc.pw).Output()
		if err != nil {
			t.Fatal(err)
		}
		got, _ := SHA512(tc.pw, tc.salt, 0)
		if want := strings.TrimSpace(string(out)); got != want {
			t.Errorf("SHA512(%q, %q) = %s, openssl says %s", tc.pw, tc.salt, got, want)
		}
	}
}

// TestSaltRules: salts that would break the "$6$salt$hash" format are
// refused; NewSalt makes 16 characters of the crypt alphabet, each time
// others.
func TestSaltRules(t *testing.T) {
	for _, salt := range []string{"a$b", "a:b", "a\nb"} {
		if _, err := SHA512("pw", salt, 0); err == nil || !strings.Contains(err.Error(), "salt") {
			t.Errorf("salt %q: %v", salt, err)
		}
	}
	a, b := NewSalt(), NewSalt()
	if len(a) != 16 || strings.Trim(a, cryptAlphabet) != "" || a == b {
		t.Errorf("NewSalt: %q, %q", a, b)
	}
}

package virt

import (
	"encoding/xml"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func sample() Domain {
	return Domain{
		Name: "pifarm-enone-abc123", Machine: "raspi3b", MemoryMiB: 1024, CPUs: 4,
		Emulator: WrapperPath, Kernel: "/c/clone-1.ker", DTB: "/c/clone-1.dtb",
		Cmdline: "console=ttyAMA0,115200 root=/dev/mmcblk0p2 a<b&'c'",
		Disk:    "/c/clone-1.qcow2", DiskFormat: "qcow2", ConsolePort: 5801,
		QEMUArgs: []string{"-netdev", "user,id=wan,hostfwd=tcp:127.0.0.1:5701-:22", "-device", "usb-net,netdev=wan"},
		Env:      map[string]string{AccelEnv: "tcg,thread=single"},
		TAPs:     []TAP{{Name: "lan", Dev: "q0tap1", MAC: "52:54:51:00:00:01"}},
		Label:    "+1000:+1000",
	}
}

func TestDomainXMLGolden(t *testing.T) {
	got := sample().XML()
	path := filepath.Join("testdata", "domain.xml")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("domain XML differs from %s (go test -update to accept):\n%s", path, got)
	}
}

// TestDomainXMLParses reads the XML back: every value arrives as given,
// whatever characters it holds.
func TestDomainXMLParses(t *testing.T) {
	for _, tricky := range []string{"plain", `a<b>&"c"'d'`, "ü ∑ \t tab"} {
		d := sample()
		d.Cmdline, d.Disk, d.QEMUArgs = tricky, "/c/"+tricky, []string{tricky}
		var v struct {
			Name string `xml:"name"`
			OS   struct {
				Cmdline string `xml:"cmdline"`
			} `xml:"os"`
			Disk struct {
				Source struct {
					File string `xml:"file,attr"`
				} `xml:"source"`
			} `xml:"devices>disk"`
			Args []struct {
				Value string `xml:"value,attr"`
			} `xml:"commandline>arg"`
		}
		if err := xml.Unmarshal([]byte(d.XML()), &v); err != nil {
			t.Fatalf("%q: %v\n%s", tricky, err, d.XML())
		}
		if v.OS.Cmdline != tricky || v.Disk.Source.File != "/c/"+tricky || len(v.Args) != 1 || v.Args[0].Value != tricky {
			t.Errorf("%q came back as %+v", tricky, v)
		}
	}
}

func TestParseMemory(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
		bad  bool
	}{
		{in: "1G", want: 1024}, {in: "512M", want: 512}, {in: "512", want: 512}, {in: "1.5G", want: 1536},
		{in: "2048k", want: 2}, {in: "1g", want: 1024},
		{in: "", bad: true}, {in: "1GiB", bad: true}, {in: "-1G", bad: true}, {in: "G", bad: true}, {in: "0", bad: true}, {in: "1KB", bad: true},
	} {
		got, err := ParseMemory(c.in)
		if c.bad != (err != nil) || (!c.bad && got != c.want) {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d (error %v)", c.in, got, err, c.want, c.bad)
		}
	}
}

func FuzzParseMemory(f *testing.F) {
	for _, s := range []string{"1G", "512M", "1.5g", "7", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseMemory(s)
		if err == nil && (n < 1 || n > 1<<30) {
			t.Fatalf("ParseMemory(%q) = %d", s, n)
		}
	})
}

func TestDomainName(t *testing.T) {
	a, b := DomainName("enone", "h:/a"), DomainName("enone", "h:/b")
	if a == b || !strings.HasPrefix(a, "pifarm-enone-") || len(a) != len("pifarm-enone-")+6 {
		t.Errorf("DomainName: %q, %q", a, b)
	}
	if DomainName("enone", "h:/a") != a {
		t.Error("DomainName is not stable")
	}
}

// TestWrapper runs the wrapper script with a stand-in QEMU that prints its
// arguments: the first -accel's value is replaced when AccelEnv is set,
// arguments with blanks and quotes pass unchanged, and without AccelEnv
// nothing changes.
func TestWrapper(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu it's")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\"; done\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	w := filepath.Join(dir, "wrapper")
	if err := os.WriteFile(w, []byte(Wrapper(fake)), 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"-name", "a b", "-accel", "tcg", "-m", "1024", "-accel", "tcg", "-append", "x='y' \"z\"", ""}
	for _, c := range []struct {
		env, want string
	}{
		{"", "[-name][a b][-accel][tcg][-m][1024][-accel][tcg][-append][x='y' \"z\"][]"},
		{"tcg,thread=single", "[-name][a b][-accel][tcg,thread=single][-m][1024][-accel][tcg][-append][x='y' \"z\"][]"},
	} {
		cmd := exec.Command(w, args...)
		cmd.Env = append(os.Environ(), AccelEnv+"="+c.env)
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != c.want {
			t.Errorf("%s=%q: %s %v\nwant %s", AccelEnv, c.env, out, err, c.want)
		}
	}
}

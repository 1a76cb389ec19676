package power

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// States a power query reports.
const (
	On      = "on"
	Off     = "off"
	Unknown = "unknown"
)

var (
	// "Current status for hub 1-1 [0424:2514, USB 2.00, 4 ports, ppps]"
	// ("New status for hub ..." after an action).
	uhubHubRE = regexp.MustCompile(`^(?:Current|New) status for hub (\S+) \[`)
	// "  Port 2: 0503 power highspeed enable connect [0424:ec00]"
	uhubPortRE = regexp.MustCompile(`^\s+Port (\d+): ([0-9a-fA-F]{4})((?:\s+[^\s\[]+)*)\s*(?:\[.*)?$`)
)

// ParseUhubctl reads uhubctl's status output (`uhubctl -l HUB -p PORT`, or
// the "New status" an action prints) and tells whether port PORT of hub
// HUB has power: On when its flags say "power" (USB 2 and USB 3 hubs both
// print it for a powered port), Off when they say "off". The last status
// of the hub counts (an action prints the status before and after). A hub
// or port the output does not show, and uhubctl's "No compatible devices
// detected", are errors saying so.
func ParseUhubctl(out, hub string, port int) (string, error) {
	cur, state, seenHub := "", "", false
	for _, l := range strings.Split(strings.ReplaceAll(out, "\r", ""), "\n") {
		if m := uhubHubRE.FindStringSubmatch(l); m != nil {
			cur = m[1]
			seenHub = seenHub || cur == hub
			continue
		}
		m := uhubPortRE.FindStringSubmatch(l)
		if m == nil || cur != hub {
			continue
		}
		if p, err := strconv.Atoi(m[1]); err != nil || p != port {
			continue
		}
		state = Unknown
		for _, w := range strings.Fields(m[3]) {
			switch w {
			case "power":
				state = On
			case "off":
				if state != On {
					state = Off
				}
			}
		}
	}
	switch {
	case state != "":
		return state, nil
	case strings.Contains(out, "No compatible devices detected"):
		return "", fmt.Errorf("uhubctl finds no hub it can switch (No compatible devices detected): is the hub plugged in, does it switch ports one by one, may this user use it (sudo, or udev rules)?")
	case !seenHub:
		return "", fmt.Errorf("uhubctl shows no hub %s: `uhubctl` without arguments lists the hubs and their locations", hub)
	}
	return "", fmt.Errorf("uhubctl shows hub %s without a port %d", hub, port)
}

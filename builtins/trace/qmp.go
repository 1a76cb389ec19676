package trace

import (
	"encoding/json"
	"fmt"
)

// QMPRequest is the JSON of one QMP command as pifarm sends it:
// {"execute":"quit"}, or {"arguments":{...},"execute":"x"} when args is
// not nil (args is anything encoding/json takes, a json.RawMessage too).
func QMPRequest(command string, args any) ([]byte, error) {
	if command == "" {
		return nil, fmt.Errorf("qmp: empty command name")
	}
	msg := map[string]any{"execute": command}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: arguments: %w", command, err)
	}
	return b, nil
}

// QMPLine is the shell command that sends command (with args, see
// QMPRequest) to the QMP socket as pifarm does: capabilities negotiation,
// then the command, through socat:
//
//	printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"quit"}' | socat - UNIX-CONNECT:/path/qmp.sock
func QMPLine(socket, command string, args any) (string, error) {
	req, err := QMPRequest(command, args)
	if err != nil {
		return "", err
	}
	return `printf '%s\n' '{"execute":"qmp_capabilities"}' ` + Quote(string(req)) +
		" | socat - UNIX-CONNECT:" + Quote(socket), nil
}

// QMP performs a QMP action on socket through the door: the trace line is
// QMPLine of the same socket, command and arguments, and fn (which sends
// them) runs only live.
func (d *Door) QMP(socket, command string, args any, fn func() error) error {
	line, err := QMPLine(socket, command, args)
	if err != nil {
		return err
	}
	return d.Do(line, fn)
}

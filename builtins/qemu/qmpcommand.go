package qemu

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"go.starlark.net/starlark"
	"pifarm/builtins/farm"
)

// isQuery reports whether a QMP command only asks (query-status,
// query-chardev, ...): such a command runs in a dry run too.
func isQuery(command string) bool {
	return strings.HasPrefix(command, "query-") && command != "query-"
}

// QMPCommand sends one QMP command to instance n's QEMU (see qemu.qmp).
func (in *Instances) QMPCommand(n *farm.Node, command string, arguments starlark.Value) (string, error) {
	var args any
	if arguments != nil && arguments != starlark.None {
		js, err := starlarkJSON(arguments)
		if err != nil {
			return "", fmt.Errorf("qmp %s arguments: %w", command, err)
		}
		args = json.RawMessage(js)
	}
	if h, ok := in.placed(n); ok {
		return in.qmpOn(h, n, command, args)
	}
	st := in.Status(n)
	if !st.Running {
		return "", fmt.Errorf("instance %d is not running", n.ID)
	}
	sock := in.F.QMP(n.ID)
	out := "{}"
	run := func() error {
		q, err := DialQMP(in.D.Context(), sock, 3*time.Second)
		if err != nil {
			return err
		}
		defer q.Close()
		raw, err := q.Execute(in.D.Context(), 10*time.Second, command, args)
		if err != nil {
			return err
		}
		if raw != nil {
			out = string(raw)
		}
		return nil
	}
	if isQuery(command) {
		err := run()
		return out, err
	}
	err := in.D.QMP(sock, command, args, run)
	return out, err
}

// starlarkJSON encodes a Starlark dict/list/scalar as JSON.
func starlarkJSON(v starlark.Value) ([]byte, error) {
	g, err := jsonValue(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(g)
}

// jsonValue is the Go value encoding/json encodes as v does in JSON.
func jsonValue(v starlark.Value) (any, error) {
	switch x := v.(type) {
	case starlark.NoneType:
		return nil, nil
	case starlark.Bool:
		return bool(x), nil
	case starlark.Int:
		n, ok := x.Int64()
		if !ok {
			return nil, fmt.Errorf("integer %s too large", x)
		}
		return n, nil
	case starlark.Float:
		return float64(x), nil
	case starlark.String:
		return string(x), nil
	case *starlark.List, starlark.Tuple:
		it := x.(starlark.Indexable)
		l := make([]any, it.Len())
		for i := range l {
			e, err := jsonValue(it.Index(i))
			if err != nil {
				return nil, err
			}
			l[i] = e
		}
		return l, nil
	case *starlark.Dict:
		m := map[string]any{}
		for _, kv := range x.Items() {
			k, ok := starlark.AsString(kv[0])
			if !ok {
				return nil, fmt.Errorf("dict key %s is not a string", kv[0])
			}
			e, err := jsonValue(kv[1])
			if err != nil {
				return nil, err
			}
			m[k] = e
		}
		return m, nil
	}
	return nil, fmt.Errorf("cannot encode %s as JSON", v.Type())
}

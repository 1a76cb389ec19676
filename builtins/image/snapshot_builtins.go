package image

import (
	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/trace"
)

// The builtins of snapshots (see snapshot.go) and the structs they return.

// snapshotsDoc is what the module's table says of snapshots as a whole.
const snapshotsDoc = "Snapshots are of a stopped guest's disk: live ones, with its RAM, are impossible with\n" +
	"pifarm's machine (QEMU 7.2: \"State blocked by non-migratable device usb-net\")."

func snapStruct(id int, s SnapInfo) *starlarkstruct.Struct {
	date := starlark.Value(starlark.None)
	text := ""
	if !s.Date.IsZero() {
		date = starlark.MakeInt64(s.Date.Unix())
		text = s.Date.Local().Format("2006-01-02 15:04:05")
	}
	return mkstruct("snapshot", starlark.StringDict{
		"instance": starlark.MakeInt(id), "name": starlark.String(s.Name), "kind": starlark.String(s.Kind),
		"id": starlark.String(s.ID), "date": date, "date_text": starlark.String(text),
		"size": starlark.MakeInt64(s.Size), "own": starlark.MakeInt64(s.Own), "boot": starlark.String(s.Boot),
		"recorded": starlark.Bool(s.Recorded), "known_hosts": starlark.Bool(s.KnownHosts),
		"disk": starlark.String(s.Disk), "note": starlark.String(s.Note),
	})
}

// instanceName unpacks the (instance, name) arguments of the snapshot
// builtins.
func (m *mod) instanceName(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (int, string, error) {
	inst := m.instanceRef()
	var name string
	err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &inst, "name", &name)
	return id(inst), name, err
}

func (m *mod) snapshotFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, name, err := m.instanceName(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	if err := m.onHost(n, "snapshot"); err != nil {
		return nil, err
	}
	s, err := m.TakeSnapshot(n, name)
	if err != nil {
		return nil, err
	}
	return snapStruct(n, *s), nil
}

func (m *mod) snapshotsFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, err := m.instanceArg(b, args, kwargs, "instance?")
	if err != nil {
		return nil, err
	}
	ss, err := m.Snapshots(n)
	if err != nil {
		return nil, err
	}
	l := make([]starlark.Value, len(ss))
	for i, s := range ss {
		l[i] = snapStruct(n, s)
	}
	return starlark.NewList(l), nil
}

func (m *mod) rollbackFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, name, err := m.instanceName(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	if err := m.onHost(n, "rollback"); err != nil {
		return nil, err
	}
	r, err := m.Rollback(n, name)
	if err != nil {
		return nil, err
	}
	return mkstruct("rollback", starlark.StringDict{
		"snapshot": snapStruct(n, r.Snapshot), "boot_restored": starlark.Bool(r.BootRestored),
		"known_hosts_restored": starlark.Bool(r.KnownHostsRestored), "boot": bootStruct(r.Boot),
	}), nil
}

func (m *mod) deleteSnapshotFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, name, err := m.instanceName(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	if err := m.onHost(n, "deleting a snapshot"); err != nil {
		return nil, err
	}
	rm, err := m.DeleteSnapshot(n, name)
	if err != nil {
		return nil, err
	}
	return trace.Strings(rm), nil
}

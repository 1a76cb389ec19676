package image

import (
	"fmt"
	"sort"
	"strconv"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
	"pifarm/builtins/disk/mbr"
	"pifarm/builtins/farm"
	"pifarm/builtins/image/shacrypt"
	"pifarm/builtins/trace"
	"pifarm/builtins/virt"
)

// The builtins of the module's table (New), in its order, and the structs
// they return.

// instanceArg unpacks the one argument of a builtin that takes an
// instance alone; param is its name in UnpackArgs' notation ("instance?"
// when it may be left out: instance 0).
func (m *mod) instanceArg(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, param string) (int, error) {
	inst := m.instanceRef()
	err := trace.UnpackArgs(b.Name(), args, kwargs, param, &inst)
	return id(inst), err
}

// onHost refuses operation what on instance id's disk file when that disk
// lives on the instance's remote libvirt host (see virt.RefuseOnHost).
func (m *mod) onHost(id int, what string) error {
	if id <= 0 {
		return nil
	}
	n, err := m.f.Resolve(strconv.Itoa(id))
	if err != nil {
		return nil // not a node of the table: no host
	}
	return virt.RefuseOnHost(m.f, n, what)
}

// imageArg unpacks the one argument of a builtin that takes an image
// alone (default: instance 0's disk) and returns its path.
func (m *mod) imageArg(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (string, error) {
	img := m.imageRef()
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "image?", &img); err != nil {
		return "", err
	}
	p, _, err := m.disk(img)
	return p, err
}

func mkstruct(name string, d starlark.StringDict) *starlarkstruct.Struct {
	return starlarkstruct.FromStringDict(starlark.String(name), d)
}

func layoutStruct(path string, l *mbr.Layout) *starlarkstruct.Struct {
	part := func(p mbr.Part) starlark.Value {
		return mkstruct("partition", starlark.StringDict{
			"index": starlark.MakeInt(p.Index), "type": starlark.MakeInt(int(p.Type)),
			"start": starlark.MakeUint64(p.Start), "sectors": starlark.MakeUint64(p.Sectors),
			"offset": starlark.MakeInt64(p.Offset()), "bytes": starlark.MakeInt64(p.Bytes()),
		})
	}
	return mkstruct("layout", starlark.StringDict{
		"path": starlark.String(path), "size": starlark.MakeInt64(l.FileSize),
		"disk_id": starlark.String(fmt.Sprintf("%08x", l.DiskID)),
		"boot":    part(l.Boot()), "root": part(l.Root()),
	})
}

func (m *mod) verifyFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	p, err := m.imageArg(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	d, err := m.open(p)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return layoutStruct(p, d.Layout), nil
}

func (m *mod) registeredFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := trace.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
		return nil, err
	}
	if r := m.Registered(); r != "" {
		return starlark.String(r), nil
	}
	return starlark.None, nil
}

func (m *mod) registerFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var p string
	if err := trace.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &p); err != nil {
		return nil, err
	}
	abs, err := m.Register(p)
	if err != nil {
		return nil, err
	}
	return starlark.String(abs), nil
}

func planStruct(pl *ExpandPlan) *starlarkstruct.Struct {
	return mkstruct("expand", starlark.StringDict{
		"path": starlark.String(pl.Path), "size_before": starlark.MakeInt64(pl.SizeBefore),
		"size": starlark.MakeInt64(pl.Size), "root_before": starlark.MakeUint64(pl.RootBefore),
		"root": starlark.MakeUint64(pl.Root), "no_need": starlark.Bool(pl.NoNeed),
		"script": starlark.String(pl.Script),
	})
}

func (m *mod) planExpandFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return m.expandWith(b, args, kwargs, m.PlanExpand, "")
}

func (m *mod) expandFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	return m.expandWith(b, args, kwargs, m.Expand, "expanding the disk")
}

// expandWith is plan_expand (do: plan only) and expand (do: plan and do):
// both take the image (an instance or a path) and return the plan.
func (m *mod) expandWith(b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple, do func(string) (*ExpandPlan, error), what string) (starlark.Value, error) {
	img := m.imageRef()
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "image?", &img); err != nil {
		return nil, err
	}
	p, inst, err := m.disk(img)
	if err != nil {
		return nil, err
	}
	if what != "" {
		if err := m.onHost(inst, what); err != nil {
			return nil, err
		}
	}
	pl, err := do(p)
	if err != nil {
		return nil, err
	}
	return planStruct(pl), nil
}

func (m *mod) qbootFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	inst := m.instanceRef()
	var img trace.OptString
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance?", &inst, "image?", &img); err != nil {
		return nil, err
	}
	path := img.S
	if path != "" {
		path = farm.ExpandPath(path)
	}
	q, err := m.ProvideQboot(id(inst), path)
	if err != nil {
		return nil, err
	}
	return mkstruct("qboot", starlark.StringDict{
		"kernel": starlark.String(q.Kernel), "dtb": starlark.String(q.DTB), "sig": starlark.String(q.Sig),
		"sum": starlark.String(q.Sum), "sizes": trace.Ints(q.Sizes),
	}), nil
}

func (m *mod) checkBootFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, err := m.instanceArg(b, args, kwargs, "instance?")
	if err != nil {
		return nil, err
	}
	st, err := m.CheckBoot(n)
	if err != nil {
		return nil, err
	}
	return bootStruct(st), nil
}

func bootStruct(st BootState) *starlarkstruct.Struct {
	return mkstruct("boot", starlark.StringDict{
		"state": starlark.String(st.State), "message": starlark.String(st.Message), "hashed": starlark.Bool(st.Hashed),
	})
}

func (m *mod) seedFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	img := m.imageRef()
	var user, pw, hash, salt trace.OptString
	var keys trace.StringList
	var files *starlark.Dict
	ssh := true
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "image?", &img, "ssh?", &ssh, "user?", &user,
		"password?", &pw, "password_hash?", &hash, "keys?", &keys, "files?", &files, "salt?", &salt); err != nil {
		return nil, err
	}
	o := SeedOptions{SSH: ssh, User: user.S, Password: pw.S, Hash: hash.S, Salt: salt.S, Keys: keys.Strings, Files: map[string]string{}}
	if o.Password != "" {
		m.d.Secret(o.Password)
	}
	if files != nil {
		for _, it := range files.Items() {
			k, ok1 := starlark.AsString(it[0])
			c, ok2 := starlark.AsString(it[1])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("files: want name -> text, got %s: %s", it[0].Type(), it[1].Type())
			}
			o.Files[k] = c
		}
	}
	p, inst, err := m.disk(img)
	if err != nil {
		return nil, err
	}
	if err := m.onHost(inst, "seeding the disk"); err != nil {
		return nil, err
	}
	res, err := m.Seed(p, o)
	if err != nil {
		return nil, err
	}
	return mkstruct("seed", starlark.StringDict{"written": trace.Strings(res.Written),
		"clones_kept": trace.Ints(res.ClonesKept), "clones_invalid": trace.Ints(res.ClonesInvalid),
		"clones_repaired": trace.Ints(res.ClonesRepaired)}), nil
}

func (m *mod) hashFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var pw string
	var salt trace.OptString
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "password", &pw, "salt?", &salt); err != nil {
		return nil, err
	}
	s := salt.S
	if s == "" {
		s = shacrypt.NewSalt()
	}
	h, err := shacrypt.SHA512(pw, s, 0)
	if err != nil {
		return nil, err
	}
	return starlark.String(h), nil
}

func (m *mod) mountFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var part string
	inst := m.instanceRef()
	sudo := false
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "part", &part, "instance?", &inst, "sudo?", &sudo); err != nil {
		return nil, err
	}
	if err := m.onHost(id(inst), "mounting the disk"); err != nil {
		return nil, err
	}
	r, err := m.Mount(part, id(inst), sudo)
	if err != nil {
		return nil, err
	}
	return mkstruct("mount", starlark.StringDict{"target": starlark.String(r.Target), "source": starlark.String(r.Source), "how": starlark.String(r.How)}), nil
}

func (m *mod) umountFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var part string
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "part", &part); err != nil {
		return nil, err
	}
	ok, err := m.Umount(part)
	if err != nil {
		return nil, err
	}
	return starlark.Bool(ok), nil
}

func (m *mod) statusFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, err := m.instanceArg(b, args, kwargs, "instance?")
	if err != nil {
		return nil, err
	}
	s, err := m.Status(n)
	if err != nil {
		return nil, err
	}
	i := starlark.MakeInt64
	return mkstruct("status", starlark.StringDict{
		"path": starlark.String(s.Path), "real": starlark.String(s.Real), "format": starlark.String(s.Format),
		"file_size": i(s.FileSize), "used_by_fs": i(s.UsedByFS), "ext4_size": i(s.Ext4Size), "ext4_used": i(s.Ext4Used),
		"margin": i(s.Margin), "recommended_margin": i(s.Recommended), "boot": bootStruct(s.Boot),
		"warnings": trace.Strings(s.Warnings), "text": starlark.String(s.Text()),
	}), nil
}

func (m *mod) cloneFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	inst := m.instanceRef()
	linked, replace := false, true
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "instance", &inst, "linked?", &linked, "replace?", &replace); err != nil {
		return nil, err
	}
	if err := m.onHost(id(inst), "a new clone"); err != nil {
		return nil, err
	}
	r, err := m.clone(id(inst), linked, replace)
	if err != nil {
		return nil, err
	}
	return mkstruct("clone", starlark.StringDict{"path": starlark.String(r.Path), "base": starlark.String(r.Base), "linked": starlark.Bool(r.Linked), "made": starlark.Bool(r.Made)}), nil
}

func (m *mod) checkCloneFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, err := m.instanceArg(b, args, kwargs, "instance")
	if err != nil {
		return nil, err
	}
	st, err := m.CheckClone(n)
	if err != nil {
		return nil, err
	}
	return mkstruct("clone_state", starlark.StringDict{
		"exists": starlark.Bool(st.Exists), "linked": starlark.Bool(st.Linked), "ok": starlark.Bool(st.OK),
		"base": starlark.String(st.Base), "reason": starlark.String(st.Reason),
	}), nil
}

func (m *mod) removeCloneFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	n, err := m.instanceArg(b, args, kwargs, "instance")
	if err != nil {
		return nil, err
	}
	rm, err := m.RemoveClone(n)
	if err != nil {
		return nil, err
	}
	return trace.Strings(rm), nil
}

func (m *mod) linkedFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	p, err := m.imageArg(b, args, kwargs)
	if err != nil {
		return nil, err
	}
	ids, err := m.LinkedClones(p)
	if err != nil {
		return nil, err
	}
	return trace.Ints(ids), nil
}

func (m *mod) clonesFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := trace.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
		return nil, err
	}
	ids, err := m.Clones()
	if err != nil {
		return nil, err
	}
	sort.Ints(ids)
	return trace.Ints(ids), nil
}

func (m *mod) runningFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	if err := trace.UnpackPositionalArgs(b.Name(), args, kwargs, 0); err != nil {
		return nil, err
	}
	run, err := m.running()
	if err != nil {
		return nil, err
	}
	l := make([]starlark.Value, len(run))
	for i, r := range run {
		l[i] = mkstruct("running", starlark.StringDict{"id": starlark.MakeInt(r.ID), "pid": starlark.MakeInt(r.Pid)})
	}
	return starlark.NewList(l), nil
}

func (m *mod) mountsFn(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	img := m.imageRef()
	if err := trace.UnpackArgs(b.Name(), args, kwargs, "image?", &img); err != nil {
		return nil, err
	}
	var imgs []string
	if img.None {
		if p, err := m.diskPath(0); err == nil {
			imgs = append(imgs, p)
		}
	} else {
		p, _, err := m.disk(img)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, p)
	}
	ms, err := m.mounts(imgs...)
	if err != nil {
		return nil, err
	}
	l := make([]starlark.Value, len(ms))
	for i, x := range ms {
		l[i] = mkstruct("mount", starlark.StringDict{"source": starlark.String(x.Source), "target": starlark.String(x.Target),
			"fstype": starlark.String(x.FSType), "options": starlark.String(x.Options)})
	}
	return starlark.NewList(l), nil
}

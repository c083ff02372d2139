package zzglob

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// GlobOption configures Glob and MultiGlob.
type GlobOption func(*globConfig)

type globConfig struct {
	traverseSymlinks     bool
	walkIntermediateDirs bool
}

// TraverseSymlinks says whether the walk descends into symbolic links to directories
// (default true). Either way a symlink that matches is reported.
func TraverseSymlinks(traverse bool) GlobOption {
	return func(c *globConfig) { c.traverseSymlinks = traverse }
}

// WalkIntermediateDirs says whether the callback is also called for the directories the walk
// passes through on the way to matches (the pattern's literal root included), not only for
// matches (default false).
func WalkIntermediateDirs(walk bool) GlobOption {
	return func(c *globConfig) { c.walkIntermediateDirs = walk }
}

func newGlobConfig(opts []GlobOption) globConfig {
	cfg := globConfig{traverseSymlinks: true}
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// Glob walks the file system and calls fn for every path that matches the pattern, like
// fs.WalkDir: paths are spelled like the pattern (relative patterns give relative paths),
// a directory that cannot be read is passed with its error, a missing root is passed as
// fn(root, nil, err), fn may return fs.SkipDir (do not descend; for a file: skip the rest of
// its directory) or fs.SkipAll (stop, no error); any other error stops the walk and is
// returned. Every match is reported once.
func (p *Pattern) Glob(fn fs.WalkDirFunc, opts ...GlobOption) error {
	return MultiGlob(context.Background(), []*Pattern{p}, fn, opts...)
}

// MultiGlob is Glob for several patterns: each matching path is reported once even when
// several patterns match it. It stops with ctx's error when ctx is done.
func MultiGlob(ctx context.Context, patterns []*Pattern, fn fs.WalkDirFunc, opts ...GlobOption) error {
	w := &walker{ctx: ctx, fn: fn, cfg: newGlobConfig(opts), reported: map[string]bool{}}
	for _, p := range patterns {
		if p == nil {
			continue
		}
		for _, a := range p.alts {
			err := w.walkAlternative(a)
			if errors.Is(err, fs.SkipAll) {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

type walker struct {
	ctx      context.Context
	fn       fs.WalkDirFunc
	cfg      globConfig
	reported map[string]bool // matches already given to fn
	visited  map[string]bool // intermediate directories already given to fn
}

// errSkipRest stops the entries of one directory (fn returned SkipDir for a file).
var errSkipRest = errors.New("skip the rest of this directory")

func (w *walker) walkAlternative(a *alternative) error {
	root := a.root
	fsRoot := root
	if fsRoot == "" {
		fsRoot = "."
	}
	info, err := os.Stat(fsRoot) // the literal root is followed even when it is a symlink
	if err != nil {
		if linfo, lerr := os.Lstat(fsRoot); lerr == nil && len(a.segs) == 0 {
			// A dangling symlink named literally still exists as a path.
			info, err = linfo, nil
		}
	}
	if err != nil {
		return w.call(root, nil, err)
	}
	d := fs.FileInfoToDirEntry(info)
	if len(a.segs) == 0 { // no meta characters: the path itself, if it exists
		return w.report(root, d)
	}
	if !d.IsDir() {
		return nil
	}
	if root != "" && w.cfg.walkIntermediateDirs {
		if err := w.intermediate(root, d); err != nil {
			if errors.Is(err, fs.SkipDir) {
				return nil
			}
			return err
		}
	}
	var ancestors map[string]bool
	if w.cfg.traverseSymlinks {
		ancestors = map[string]bool{}
		if real, err := filepath.EvalSymlinks(fsRoot); err == nil {
			ancestors[real] = true
		}
	}
	err = w.descend(a, fsRoot, root, closure(a, []int{0}), ancestors)
	if errors.Is(err, errSkipRest) || errors.Is(err, fs.SkipDir) {
		return nil
	}
	return err
}

// descend walks the entries of dir (spelled display in reports) with the pattern states
// reached at dir.
func (w *walker) descend(a *alternative, dir, display string, states []int, ancestors map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		info, serr := os.Stat(dir)
		var d fs.DirEntry
		if serr == nil {
			d = fs.FileInfoToDirEntry(info)
		}
		return w.call(display, d, err)
	}
	for _, e := range entries {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		name := e.Name()
		next := step(a, states, name)
		if len(next) == 0 {
			continue
		}
		childPath := filepath.Join(dir, name)
		childDisplay := name
		if display != "" {
			childDisplay = display + "/" + name
			if display == "/" {
				childDisplay = "/" + name
			}
		}
		isDir := e.IsDir()
		var real string
		if e.Type()&fs.ModeSymlink != 0 && w.cfg.traverseSymlinks {
			if info, err := os.Stat(childPath); err == nil && info.IsDir() {
				if r, err := filepath.EvalSymlinks(childPath); err == nil && !ancestors[r] {
					isDir, real = true, r
				}
			}
		}
		more := canContinue(a, next)
		descendInto := isDir && more
		if a.whole.MatchString(trimDot(childDisplay)) {
			err := w.report(childDisplay, e)
			switch {
			case errors.Is(err, fs.SkipDir):
				if !isDir {
					return errSkipRest
				}
				descendInto = false
			case err != nil:
				return err
			}
		} else if descendInto && w.cfg.walkIntermediateDirs {
			err := w.intermediate(childDisplay, e)
			switch {
			case errors.Is(err, fs.SkipDir):
				descendInto = false
			case err != nil:
				return err
			}
		}
		if !descendInto {
			continue
		}
		if real == "" && ancestors != nil {
			real, _ = filepath.EvalSymlinks(childPath)
		}
		if real != "" && ancestors != nil {
			ancestors[real] = true
		}
		err := w.descend(a, childPath, childDisplay, next, ancestors)
		if real != "" && ancestors != nil {
			delete(ancestors, real)
		}
		if errors.Is(err, errSkipRest) || errors.Is(err, fs.SkipDir) {
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// report gives fn a match, once per match.
func (w *walker) report(path string, d fs.DirEntry) error {
	if w.reported[path] {
		return nil
	}
	w.reported[path] = true
	return w.call(path, d, nil)
}

// intermediate gives fn a directory on the way, once.
func (w *walker) intermediate(path string, d fs.DirEntry) error {
	if w.visited == nil {
		w.visited = map[string]bool{}
	}
	if w.visited[path] || w.reported[path] {
		return nil
	}
	w.visited[path] = true
	return w.call(path, d, nil)
}

func (w *walker) call(path string, d fs.DirEntry, err error) error {
	if path == "" {
		path = "."
	}
	return w.fn(path, d, err)
}

// The segments below the root form a small automaton: state i means "segments[i:] remain".
// A segWild segment can match across '/', so from it every path below may match ("any").

const stateAny = -1

// closure adds, for every "**" state, the state after it (a globstar may match nothing).
func closure(a *alternative, states []int) []int {
	seen := map[int]bool{}
	var out []int
	var add func(int)
	add = func(s int) {
		if seen[s] {
			return
		}
		seen[s] = true
		out = append(out, s)
		if s >= 0 && s < len(a.segs) && a.segs[s].kind == segGlobstar {
			add(s + 1)
		}
	}
	for _, s := range states {
		add(s)
	}
	return out
}

// step consumes one path segment.
func step(a *alternative, states []int, name string) []int {
	var next []int
	for _, s := range states {
		if s == stateAny {
			next = append(next, stateAny)
			continue
		}
		if s >= len(a.segs) {
			continue
		}
		seg := a.segs[s]
		switch seg.kind {
		case segGlobstar:
			next = append(next, s)
		case segWild:
			next = append(next, stateAny)
		case segLiteral:
			if name == seg.literal {
				next = append(next, s+1)
			}
		case segMeta:
			if seg.re.MatchString(name) {
				next = append(next, s+1)
			}
		}
	}
	return closure(a, next)
}

// canContinue reports whether some state still expects segments below.
func canContinue(a *alternative, states []int) bool {
	for _, s := range states {
		if s == stateAny || s < len(a.segs) {
			return true
		}
	}
	return false
}
